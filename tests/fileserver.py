"""A real HTTP server on 127.0.0.1 for download tests: Range requests, dropped connections, errors."""

from __future__ import annotations

import http.server
import re
import threading


class FileServer:
    """Serves ``files`` {url path: bytes} with ``Range: bytes=N-`` support; records every request."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.user_agents: list[str | None] = []
        self.drop_after: int | None = None  # send this many body bytes, then close the connection
        self.drop_times = 0  # ... this many times
        self.status: dict[str, int] = {}  # path -> error status to answer instead
        self.status_times: dict[str, int] = {}  # path -> how many times (missing: always)
        self.ignore_range = False
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:
                range_header = self.headers.get("Range")
                with server._lock:
                    server.requests.append((self.path, range_header))
                    server.user_agents.append(self.headers.get("User-Agent"))
                    status = server.status.get(self.path)
                    if status is not None and self.path in server.status_times:
                        server.status_times[self.path] -= 1
                        if server.status_times[self.path] <= 0:
                            del server.status[self.path]
                    drop = None
                    if server.drop_times > 0:
                        server.drop_times -= 1
                        drop = server.drop_after
                body = server.files.get(self.path)
                if status is not None or body is None:
                    self.send_error(status or 404)
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
                if match and not server.ignore_range:
                    start = int(match.group(1))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if drop is not None:
                    self.wfile.write(payload[:drop])
                    self.wfile.flush()
                    self.close_connection = True  # the body ends early: the client sees a short read
                    return
                self.wfile.write(payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
