"""WAV snippets of events: the audio from onset to offset (plus a little context), one file per event.

The sink keeps the last ``history_s`` seconds of model-rate audio; an event that lasts longer is
cut to its newest ``history_s`` seconds (and the log says so).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import soundfile as sf

from ...errors import DymnEdgeError
from ...frontend import SAMPLE_RATE
from ...tagging import Tag
from ..events import Event
from ..worker import WindowResult

__all__ = ["SnippetSink"]

logger = logging.getLogger(__name__)


class SnippetSink:
    def __init__(self, folder: str | Path, *, history_s: float = 60.0, context_s: float = 0.5, sample_rate: int = SAMPLE_RATE) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DymnEdgeError(f"{folder}: cannot create the event recording folder ({e.strerror})") from e
        self.sample_rate = sample_rate
        self.keep = int(history_s * sample_rate)
        self.context = int(context_s * sample_rate)
        self._audio = np.zeros(0, dtype=np.float32)
        self._start = 0  # absolute sample index of _audio[0]
        self.written: list[Path] = []

    def audio(self, samples: np.ndarray, start: int) -> None:
        """Model-rate audio of the stream, in order; ``start`` is the absolute index of samples[0]."""
        if start != self._start + self._audio.shape[0]:  # a gap: restart the history there
            self._audio, self._start = np.zeros(0, dtype=np.float32), start
        self._audio = np.concatenate([self._audio, samples])
        excess = self._audio.shape[0] - self.keep
        if excess > 0:
            self._audio, self._start = self._audio[excess:], self._start + excess

    def scores(self, result: WindowResult, tags: list[Tag]) -> None:
        pass

    def event(self, event: Event) -> None:
        if event.offset is None:
            return
        lo = max(int(event.onset * self.sample_rate) - self.context, 0)
        hi = int(event.offset * self.sample_rate) + self.context
        if lo < self._start:
            logger.warning("event %d (%s) is longer than the %.0f s of audio kept; its snippet starts at %.1f s",
                           event.id, event.label, self.keep / self.sample_rate, self._start / self.sample_rate)
        clip = self._audio[max(lo - self._start, 0) : max(hi - self._start, 0)]
        if clip.shape[0] == 0:
            return
        slug = re.sub(r"[^A-Za-z0-9]+", "_", event.label).strip("_").lower()
        path = self.folder / f"event_{event.id:04d}_{slug}_{event.onset:.2f}s.wav"
        sf.write(path, clip, self.sample_rate, subtype="PCM_16")
        self.written.append(path)

    def close(self) -> None:
        pass
