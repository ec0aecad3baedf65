"""Model downloads that survive bad networks and never hand back an unverified file.

Why this module exists: checkpoints are tens of megabytes fetched from GitHub releases or a
mirror, often over flaky edge-device links. A download therefore

* writes into ``<dest>.part`` and renames it into place (``os.replace``) only after it has been
  verified, so an interrupted or corrupted transfer never looks like a finished file;
* resumes an existing ``.part`` with an HTTP ``Range`` request, and retries a connection that
  drops mid-body, resuming from what already arrived;
* always checks the sha256 (the pinned registry hash, an explicit one, or the hash recorded on
  first download: trust on first use), and the size the server announced.

Only the standard library (``urllib.request``) is used for HTTP, so the torch-free runtime gains
no dependency beyond ``rich`` for the progress bar.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from . import registry
from .checksum import sha256_file
from .errors import ChecksumError, DownloadError, UnknownModelError

__all__ = ["cached_path", "download", "fetch"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 16
_BACKOFF_S = 0.2  # first retry delay; doubles after each retry
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$", re.IGNORECASE)


class _ResumeMismatch(Exception):
    """The server answered a Range request with a different start offset."""


# Failures of the connection itself: retried, resuming from the bytes already in ``.part``.
# HTTPError is a URLError but is handled before these (4xx are final, 5xx are retried).
_RETRYABLE = (
    http.client.HTTPException,  # IncompleteRead, RemoteDisconnected, BadStatusLine, ...
    ConnectionError,  # ConnectionResetError, ConnectionAbortedError, BrokenPipeError
    socket.timeout,  # TimeoutError on Python >= 3.10
    TimeoutError,
    urllib.error.URLError,
    _ResumeMismatch,
)


# --------------------------------------------------------------------------------------------
# download


def download(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    progress: bool = True,
    retries: int = 3,
    timeout_s: float = 30.0,
) -> str:
    """Download ``url`` to ``dest``, resuming and retrying, and verify it before it appears.

    The body goes into ``dest + ".part"``; an existing ``.part`` is resumed with
    ``Range: bytes=N-`` (a ``206`` reply is appended, a ``200`` reply restarts from zero, a
    ``416`` reply means the ``.part`` may already be complete and is verified). Only a verified
    file is renamed to ``dest``. If bytes resumed from an earlier run's ``.part`` fail
    verification, that ``.part`` is deleted and the download starts over once from zero.

    Args:
        url: The file to download (http, https).
        dest: Final path; parent folders are created.
        sha256: Expected hex digest. When given, a mismatch deletes the ``.part`` and raises.
        progress: Show a ``rich`` progress bar on stderr.
        retries: How many times a dropped connection, a timeout or an HTTP 5xx is retried,
            each retry resuming from the bytes already written (backoff 0.2 s, 0.4 s, ...).
        timeout_s: Socket timeout of each request, in seconds.

    Returns:
        The sha256 hex digest of the downloaded file.

    Raises:
        ChecksumError: The content does not match ``sha256``, or its size differs from the
            size the server announced.
        DownloadError: An HTTP 4xx reply (other than 416), or the transfer still failing after
            ``retries`` retries.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    expected = sha256.strip().lower() if sha256 else None
    headers = {"User-Agent": _user_agent(), "Accept-Encoding": "identity"}
    may_start_over = True

    with _ProgressBar(dest.name, enabled=progress) as bar:
        while True:
            stale = _size(part) > 0  # bytes left by an earlier, interrupted run
            if stale:
                logger.info("resuming download of %s at byte %d", url, _size(part))
            else:
                logger.info("downloading %s to %s", url, dest)
            total, complete = _transfer(url, part, headers, retries, timeout_s, bar)

            problem = None
            digest = None
            size = _size(part)
            if not complete:
                problem = f"the server reported the range as unsatisfiable but announced no size ({size} bytes on disk)"
            elif total is not None and size != total:
                problem = f"size mismatch: expected {total} bytes, got {size}"
            else:
                digest = sha256_file(part)
                if expected is not None and digest != expected:
                    problem = f"sha256 mismatch: expected {expected}, got {digest}"
            if problem is None:
                break

            if stale and may_start_over:
                logger.warning("%s: %s; deleting the partial file and downloading %s again", part, problem, url)
                part.unlink(missing_ok=True)
                may_start_over = False
                continue
            part.unlink(missing_ok=True)
            raise ChecksumError(f"download of {url} to {dest} failed verification: {problem}")

    os.replace(part, dest)
    logger.info("downloaded %s to %s (sha256 %s)", url, dest, digest)
    return digest


def _transfer(
    url: str,
    part: Path,
    headers: dict[str, str],
    retries: int,
    timeout_s: float,
    bar: _ProgressBar,
) -> tuple[int | None, bool]:
    """Fill ``part`` with the body of ``url``, resuming and retrying.

    Returns:
        ``(total, complete)``: the full size announced by the server (None when unknown), and
        False only when a 416 reply left no way to tell whether ``part`` is whole.
    """
    attempt = 0
    while True:
        offset = _size(part)
        request = urllib.request.Request(url, headers=dict(headers))
        if offset:
            request.add_header("Range", f"bytes={offset}-")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return _receive(response, url, part, offset, bar), True
        except urllib.error.HTTPError as e:
            status = f"HTTP {e.code} {e.reason}"
            reply_headers = e.headers
            e.close()
            if e.code == 416 and offset:
                total = _parse_content_range(reply_headers.get("Content-Range") if reply_headers else None)[1]
                logger.info("%s: server says range %d- is unsatisfiable (size %s); verifying %s", url, offset, total, part)
                return total, total is not None
            if 400 <= e.code < 500:
                raise DownloadError(f"download of {url} failed: {status}") from e
            error: BaseException = e
            reason = status
        except _RETRYABLE as e:
            error = e
            reason = f"{type(e).__name__}: {e}"

        if attempt >= retries:
            raise DownloadError(
                f"download of {url} failed after {attempt + 1} attempt(s): {reason}"
            ) from error
        attempt += 1
        delay = _BACKOFF_S * 2 ** (attempt - 1)
        logger.warning(
            "download of %s interrupted (%s); retry %d/%d in %.1f s, resuming at byte %d",
            url, reason, attempt, retries, delay, _size(part),
        )
        time.sleep(delay)


def _receive(response, url: str, part: Path, offset: int, bar: _ProgressBar) -> int | None:
    """Write one HTTP response body into ``part``; return the full file size if announced."""
    length = _int_or_none(response.headers.get("Content-Length"))
    if response.status == 206:
        start, total = _parse_content_range(response.headers.get("Content-Range"))
        if start is not None and start != offset:
            part.unlink(missing_ok=True)
            raise _ResumeMismatch(f"asked for byte {offset}, server resumed at byte {start}")
        if total is None and length is not None:
            total = offset + length
        mode = "ab"
    else:
        if offset:
            logger.info("%s: server ignored the Range request; restarting from zero", url)
        offset = 0
        total = length
        mode = "wb"

    bar.start(total, offset)
    expected_body = None if total is None else total - offset
    received = 0
    with open(part, mode) as f:
        while True:
            chunk = response.read(_CHUNK)
            if not chunk:
                break
            f.write(chunk)
            received += len(chunk)
            bar.advance(len(chunk))
    if expected_body is not None and received < expected_body:
        # http.client returns b"" at a premature end of a sized body instead of raising
        raise http.client.IncompleteRead(b"", expected_body - received)
    return total


# --------------------------------------------------------------------------------------------
# registry models


def fetch(
    name: str,
    *,
    base_url: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
) -> Path:
    """Return the local path of registry model ``name``, downloading it when needed.

    The file lives at ``registry.cache_dir() / "checkpoints" / card.filename``. The expected
    hash is ``sha256`` if given, else the registry's pinned hash, else the hash recorded beside
    the file (``<file>.sha256``) on its first download. A cached file that verifies is returned
    without any network request; one that does not is downloaded again (with a warning).
    When the registry pins no hash, the first download's hash is recorded (trust on first use,
    with a warning) and checked from then on.

    Args:
        name: Registry name, e.g. ``"mn04_as"``.
        base_url: Release folder URL; None uses ``registry.base_url()`` (honours
            ``$DYMN_EDGE_BASE_URL``).
        sha256: Expected hex digest, overriding a recorded one; it must agree with a pinned one.
        progress: Show a progress bar on stderr while downloading.

    Returns:
        Path of the verified checkpoint.

    Raises:
        UnknownModelError: ``name`` is not in the registry.
        ChecksumError: ``sha256`` contradicts the pinned hash (raised before any download), or
            the downloaded file does not verify.
        DownloadError: The download failed.
    """
    card = registry.get_card(name)
    if not card.released:
        raise UnknownModelError(f"{name} has no release file to download: it ships inside the package "
                                f"({registry.embedded_bundle_path(name)}), with its checkpoint in the bundle")
    path = _checkpoint_path(card)
    explicit = sha256.strip().lower() if sha256 else None
    if explicit is not None and not _HEX64.match(explicit):
        raise ChecksumError(f"{name}: {sha256!r} is not a sha256 hex digest (64 hex characters)")
    if explicit is not None and card.sha256 is not None and explicit != card.sha256.lower():
        raise ChecksumError(
            f"{name}: the given sha256 {explicit} contradicts the hash pinned by the registry "
            f"{card.sha256.lower()} (url {card.url(base_url)}, destination {path})"
        )
    expected = explicit or (card.sha256.lower() if card.sha256 else None) or _read_record(path)

    if path.is_file():
        if expected is None:
            logger.warning("%s exists but no sha256 is known to verify it; downloading it again", path)
        else:
            actual = sha256_file(path)
            if actual == expected:
                logger.debug("using cached %s", path)
                return path
            logger.warning(
                "cached %s does not match its sha256 (expected %s, got %s); downloading it again",
                path, expected, actual,
            )

    url = card.url(base_url)
    digest = download(url, path, sha256=expected, progress=progress)

    if card.sha256 is None and _read_record(path) != digest:
        _write_record(path, digest)
        if explicit is None:
            logger.warning(
                "the sha256 of %s was not pinned by the registry; recorded %s in %s "
                "(trust on first use: later loads are checked against it)",
                name, digest, _record_path(path),
            )
        else:
            logger.info("recorded the given sha256 of %s in %s", name, _record_path(path))
    return path


def cached_path(name: str) -> Path | None:
    """Return the cached checkpoint of ``name`` if it exists and verifies; never uses the network.

    Args:
        name: Registry name.

    Returns:
        The path, or None when the file is absent, no hash is known (neither pinned nor
        recorded), or its content does not match that hash.

    Raises:
        UnknownModelError: ``name`` is not in the registry.
    """
    card = registry.get_card(name)
    path = _checkpoint_path(card)
    if not path.is_file():
        return None
    expected = card.sha256.lower() if card.sha256 else _read_record(path)
    if expected is None:
        logger.debug("%s has no known sha256; not using it", path)
        return None
    actual = sha256_file(path)
    if actual != expected:
        logger.warning("cached %s does not match its sha256 (expected %s, got %s)", path, expected, actual)
        return None
    return path


# --------------------------------------------------------------------------------------------
# helpers


def _checkpoint_path(card: registry.ModelCard) -> Path:
    return registry.cache_dir() / "checkpoints" / card.filename


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _read_record(path: Path) -> str | None:
    """The hash recorded on first download, or None (absent or unreadable)."""
    record = _record_path(path)
    try:
        text = record.read_text(encoding="ascii").strip().lower()
    except (OSError, UnicodeDecodeError):
        return None
    digest = text.split()[0] if text else ""
    if not _HEX64.match(digest):
        logger.warning("ignoring %s: it does not hold a sha256 hex digest", record)
        return None
    return digest


def _write_record(path: Path, digest: str) -> None:
    record = _record_path(path)
    tmp = record.with_name(record.name + ".tmp")
    tmp.write_text(digest + "\n", encoding="ascii")
    os.replace(tmp, record)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``"bytes 10-99/100"`` -> ``(10, 100)``; ``"bytes */100"`` -> ``(None, 100)``."""
    match = _CONTENT_RANGE.match(value or "")
    if not match:
        return None, None
    start = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(3)) if match.group(3) != "*" else None
    return start, total


def _user_agent() -> str:
    try:
        from dymn_edge import __version__
    except ImportError:  # pragma: no cover - running from a bare source tree
        return "dymn-edge"
    return f"dymn-edge/{__version__}"


class _ProgressBar:
    """A rich progress bar on stderr, or nothing when disabled."""

    def __init__(self, label: str, *, enabled: bool) -> None:
        self._label = label
        self._task = None
        self._progress = None
        if enabled:
            self._progress = Progress(
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )

    def __enter__(self) -> _ProgressBar:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._progress is not None:
            self._progress.stop()

    def start(self, total: int | None, completed: int) -> None:
        """(Re)start the bar at ``completed`` bytes, e.g. a resumed offset or zero."""
        if self._progress is None:
            return
        if self._task is None:
            self._task = self._progress.add_task(self._label, total=total, completed=completed)
        else:
            self._progress.reset(self._task, total=total, completed=completed)

    def advance(self, n: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)
