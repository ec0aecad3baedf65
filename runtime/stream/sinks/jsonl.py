"""JSON Lines: one object per line, ``"type": "scores"`` or ``"type": "event"``, flushed per line.

An event is written when it starts (``"offset": null``) and again, with the same id, when it
ends. Times are seconds of stream time.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ...errors import DymnEdgeError
from ...tagging import Tag
from ..events import Event
from ..worker import WindowResult

__all__ = ["JsonlSink", "scores_line"]


def scores_line(result: WindowResult, tags: list[Tag]) -> dict:
    return {"type": "scores", "start": round(result.window.start_s, 3), "end": round(result.window.end_s, 3),
            "tags": [{"index": t.index, "label": t.label, "score": round(float(t.score), 6)} for t in tags]}


class JsonlSink:
    def __init__(self, target: str | Path) -> None:
        self.path = str(target)
        if self.path == "-":
            self._file, self._owned = sys.stdout, False
        else:
            try:
                self._file, self._owned = open(target, "a", encoding="utf-8"), True
            except OSError as e:
                raise DymnEdgeError(f"{target}: cannot open for writing JSONL ({e.strerror})") from e
        self.lines = 0

    def _write(self, obj: dict) -> None:
        self._file.write(json.dumps(obj) + "\n")
        self._file.flush()
        self.lines += 1

    def scores(self, result: WindowResult, tags: list[Tag]) -> None:
        self._write(scores_line(result, tags))

    def event(self, event: Event) -> None:
        self._write(event.to_json())

    def close(self) -> None:
        self._file.flush()
        if self._owned:
            self._file.close()
