"""Sliding windows over a sample stream: which span of audio each inference sees, in stream time.

Windows end every ``hop`` and span ``window`` seconds. At the start of a stream they grow
(the first one spans one hop), so a listener gives its first result after one hop instead of
after a whole window; the models accept any length. Only indices live here; the audio itself is
kept by the frontend that needs it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..audio import seconds_to_samples
from ..frontend import SAMPLE_RATE

__all__ = ["Window", "Windower"]


@dataclass(frozen=True)
class Window:
    index: int  # sequence number, from 0
    start: int  # absolute sample index at the model rate, inclusive
    end: int  # exclusive
    sample_rate: int = SAMPLE_RATE

    @property
    def start_s(self) -> float:
        return self.start / self.sample_rate

    @property
    def end_s(self) -> float:
        return self.end / self.sample_rate

    @property
    def duration_s(self) -> float:
        return (self.end - self.start) / self.sample_rate


class Windower:
    def __init__(self, window_s: float, hop_s: float, sample_rate: int = SAMPLE_RATE, min_samples: int = 800) -> None:
        if window_s <= 0 or hop_s <= 0:
            raise ValueError(f"window and hop must be positive seconds, got window={window_s}, hop={hop_s}")
        self.sample_rate = sample_rate
        self.window = max(1, seconds_to_samples(window_s, sample_rate))
        self.hop = max(1, seconds_to_samples(hop_s, sample_rate))
        self.min_samples = min_samples
        self.total = 0
        self._next_end = self.hop
        self._count = 0
        self._last_end = 0

    def push(self, n_samples: int) -> list[Window]:
        """Count ``n_samples`` more samples; return the windows they complete."""
        self.total += n_samples
        out = []
        while self._next_end <= self.total:
            out.append(self._make(self._next_end))
            self._next_end += self.hop
        return out

    def finish(self) -> list[Window]:
        """At the end of the stream: one last window ending at the final sample, if it adds any audio."""
        if self.total > self._last_end and self.total - max(0, self.total - self.window) >= self.min_samples:
            return [self._make(self.total)]
        return []

    def _make(self, end: int) -> Window:
        window = Window(self._count, max(0, end - self.window), end, self.sample_rate)
        self._count += 1
        self._last_end = end
        return window
