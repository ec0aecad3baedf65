"""Where scores and events go. Every sink takes the same three calls from the inference thread:
``scores(result, tags)``, ``event(event)`` and ``close()`` (flush and release; called once, at shutdown)."""

from __future__ import annotations

from typing import Protocol

from ...tagging import Tag
from ..events import Event
from ..worker import WindowResult

__all__ = ["Sink"]


class Sink(Protocol):
    def scores(self, result: WindowResult, tags: list[Tag]) -> None: ...

    def event(self, event: Event) -> None: ...

    def close(self) -> None: ...
