"""Live terminal view (rich): current top labels with bars, recent events, latency, CPU, drops.

Drawn on stderr twice a second by rich's own refresh thread, so a slow terminal
never holds up inference; stdout stays free for ``--jsonl -``.
"""

from __future__ import annotations

import collections
import threading

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ...tagging import Tag
from ..events import Event
from ..stats import StreamStats
from ..worker import WindowResult

__all__ = ["TerminalView"]

_BAR = 24


class TerminalView:
    def __init__(self, stats: StreamStats, *, title: str, recent: int = 8, console: Console | None = None) -> None:
        self.stats, self.title = stats, title
        self._tags: list[Tag] = []
        self._window = (0.0, 0.0)
        self._events: collections.OrderedDict[int, Event] = collections.OrderedDict()
        self._recent = recent
        self._lock = threading.Lock()
        self._live = Live(get_renderable=self._render, console=console or Console(stderr=True),
                          refresh_per_second=2, transient=False)
        self._live.start()

    def scores(self, result: WindowResult, tags: list[Tag]) -> None:
        with self._lock:
            self._tags, self._window = tags, (result.window.start_s, result.window.end_s)

    def event(self, event: Event) -> None:
        with self._lock:
            self._events[event.id] = event
            self._events.move_to_end(event.id)
            while len(self._events) > self._recent:
                self._events.popitem(last=False)

    def _render(self):
        s = self.stats.summary()
        with self._lock:
            tags, (start, end), events = list(self._tags), self._window, list(self._events.values())
        head = Text.assemble(
            (f"{self.title}  ", "bold"), f"stream {s['stream_s']:.1f} s   window {start:.1f}-{end:.1f} s   ",
            f"latency {s['latency_ms_median']:.0f} ms (p90 {s['latency_ms_p90']:.0f})   CPU {s['cpu_percent_steady'] or s['cpu_percent']:.0f}%   ",
            (f"dropped {s['dropped_windows']}", "red" if s["dropped_windows"] else ""),
            (f"   lost input {s['lost_input_s']:.1f} s" if s["lost_input_s"] else "", "red"),
        )
        table = Table(show_header=False, box=None, pad_edge=False)
        for tag in tags:
            filled = tag.score * _BAR
            table.add_row(f"{tag.label[:32]:32}", f"{tag.score:5.2f}", "█" * int(filled) + ("▌" if filled % 1 >= 0.5 else ""))
        recent = Table(title="events", title_justify="left", box=None)
        for col in ("id", "label", "onset", "offset", "peak"):
            recent.add_column(col)
        for e in reversed(events):
            recent.add_row(str(e.id), e.label, f"{e.onset:.1f}", "on" if e.offset is None else f"{e.offset:.1f}", f"{e.score:.2f}")
        return Group(head, table, recent)

    def close(self) -> None:
        self._live.refresh()
        self._live.stop()
