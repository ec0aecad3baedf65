"""Scores to events: per-class hysteresis with a minimum duration, in stream time.

A class turns on when its score reaches its onset threshold and stays at or above its offset
threshold (a fraction of the onset threshold) for ``min_duration`` seconds of windows. It
turns off when the score falls below the offset threshold. Hysteresis stops a score that hovers
near one threshold from flickering between on and off.

Timing. A window of length W ending at ``e`` scores the audio in ``[e - W, e)``. When a score
first rises, what changed is the newest hop of audio, so the onset is ``e - hop``. When it
falls, the event is no longer in the falling window, so the offset is that window's start
``e - W``, but never earlier than one hop after the onset. With W = hop these are the
start of the first active window and the end of the last one. Shorter windows localize
better. docs/streaming.md lists the measured onset errors for several window lengths.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..labels import LabelSet
from .windows import Window

__all__ = ["Event", "EventDetector"]


@dataclass
class Event:
    id: int
    index: int
    label: str
    onset: float  # seconds of stream time
    offset: float | None  # None while the event is still on
    score: float  # peak (smoothed) score so far

    def to_json(self) -> dict:
        return {"type": "event", "id": self.id, "label": self.label, "index": self.index,
                "onset": round(self.onset, 3), "offset": None if self.offset is None else round(self.offset, 3),
                "score": round(float(self.score), 6)}


@dataclass
class _Track:
    onset: float = 0.0
    on_time: float = 0.0  # seconds of windows at or above the offset threshold since the rise
    peak: float = 0.0
    event: Event | None = field(default=None)


class EventDetector:
    def __init__(
        self,
        classes: list[int],
        labels: LabelSet,
        onset_thresholds: np.ndarray,
        *,
        hop_s: float,
        offset_ratio: float = 0.5,
        min_duration_s: float = 0.0,
    ) -> None:
        if not 0 < offset_ratio <= 1:
            raise ValueError(f"offset ratio must be in (0, 1], got {offset_ratio}")
        if min_duration_s < 0:
            raise ValueError(f"minimum duration must be >= 0 s, got {min_duration_s}")
        self.classes = list(classes)
        self.labels = labels
        self.on = np.asarray(onset_thresholds, dtype=np.float32)
        self.off = self.on * offset_ratio
        self.hop_s = hop_s
        self.min_duration_s = min_duration_s
        self._tracks: dict[int, _Track] = {}
        self._next_id = 1

    def update(self, window: Window, scores: np.ndarray) -> list[Event]:
        """Feed one window's scores; returns events that started or ended with it (snapshots)."""
        changes: list[Event] = []
        newest = max(window.start_s, window.end_s - self.hop_s)
        for c in self.classes:
            score = float(scores[c])
            track = self._tracks.get(c)
            if track is None:
                if score >= self.on[c]:
                    track = self._tracks[c] = _Track(onset=newest, peak=score)
                else:
                    continue
            elif score < self.off[c]:
                if track.event is not None:
                    track.event.offset = max(window.start_s, track.onset + self.hop_s)
                    changes.append(self._snapshot(track.event))
                del self._tracks[c]
                continue
            track.on_time += min(self.hop_s, window.duration_s)
            track.peak = max(track.peak, score)
            if track.event is None and track.on_time >= max(self.min_duration_s, 1e-9):
                track.event = Event(self._next_id, c, self.labels[c].name, track.onset, None, track.peak)
                self._next_id += 1
                changes.append(self._snapshot(track.event))
            elif track.event is not None:
                track.event.score = track.peak
        return changes

    def finish(self, end_s: float) -> list[Event]:
        """Close every event still on at the end of the stream."""
        closed = []
        for track in self._tracks.values():
            if track.event is not None:
                track.event.offset = max(end_s, track.onset)
                closed.append(self._snapshot(track.event))
        self._tracks.clear()
        return closed

    @property
    def active(self) -> list[Event]:
        return [t.event for t in self._tracks.values() if t.event is not None]

    @staticmethod
    def _snapshot(event: Event) -> Event:
        return Event(event.id, event.index, event.label, event.onset, event.offset, event.score)
