"""Log-mel features for sliding windows, computing each new STFT frame once.

A window's features from ``log_mel(audio[start:end])`` consist of frames that lie wholly inside
the window, which are the same frames the continuous stream has at those positions, plus a few
frames at either edge that see the window's reflect padding. With windows aligned to the hop of
the frontend (10 ms), the interior frames come from a cache of frames computed once as audio
arrives, and only the edge frames (3 for the default frontend) are computed per window. The
result equals a full recompute (tested to 1e-5). Unaligned windows fall back to a full recompute.
"""

from __future__ import annotations

import math

import numpy as np

from ..frontend import FrontendConfig, frame_log_mel, log_mel, n_frames, preemphasis, stft_segments

__all__ = ["IncrementalLogMel"]


class IncrementalLogMel:
    def __init__(self, keep_samples: int, config: FrontendConfig = FrontendConfig()) -> None:
        """``keep_samples``: how far back windows may start (the window length)."""
        self.config = config
        self.keep = int(keep_samples)
        self._hop, self._half = config.hop_length, config.n_fft // 2
        self._x = np.zeros(0, dtype=np.float32)
        self._x0 = 0  # absolute index of _x[0]
        self._frames = np.zeros((0, config.n_mels), dtype=np.float32)
        self._f0 = math.ceil(self._half / self._hop)  # first frame with no padding on its left
        self._next = self._f0  # next global frame to compute
        self.full_recomputes = 0

    @property
    def total(self) -> int:
        return self._x0 + self._x.shape[0]

    def push(self, samples: np.ndarray) -> None:
        """Append model-rate samples and compute every frame they complete.

        Windows completed by this push may start up to ``keep`` samples before the new end, so
        audio is only released here, before appending: what earlier pushes no longer need.
        """
        self._trim()
        self._x = np.concatenate([self._x, np.asarray(samples, dtype=np.float32)])
        last = (self.total - self._half - 1) // self._hop  # frame g needs x[g*hop - half : g*hop + half + 1]
        if last >= self._next:
            lo = self._next * self._hop - self._half - self._x0
            hi = last * self._hop + self._half + 1 - self._x0
            x = self._x[lo:hi]
            y = preemphasis(x, self.config)
            new = frame_log_mel(stft_segments(y, last - self._next + 1, self.config), self.config)
            self._frames = np.concatenate([self._frames, new])
            self._next = last + 1

    def _trim(self) -> None:
        # Keep the audio of the longest window (plus one frame of context) and the frames inside it.
        cut = max(0, self.total - self.keep - self.config.n_fft) // self._hop * self._hop
        if cut > self._x0:
            self._x = self._x[cut - self._x0 :]
            self._x0 = cut
        first_needed = cut // self._hop
        first_kept = self._next - self._frames.shape[0]
        if first_needed > first_kept:
            self._frames = self._frames[first_needed - first_kept :]

    def features(self, start: int, end: int) -> np.ndarray:
        """(n_mels, frames) float32 for the absolute sample span [start, end), equal to log_mel of that audio."""
        if start < self._x0 or end > self.total:
            raise ValueError(f"samples [{start}, {end}) are not held (have [{self._x0}, {self.total}))")
        length = end - start
        audio = self._x[start - self._x0 : end - self._x0]
        count = n_frames(length, self.config)
        lo = self._f0  # first interior frame of the window
        hi = (length - 1 - self._half) // self._hop  # last interior frame
        offset = (hi + 1 - lo) * self._hop  # where the tail stretch for the right edge frames starts
        if start % self._hop or hi < lo or length - offset < self.config.min_samples:
            self.full_recomputes += 1
            return log_mel(audio, self.config)
        out = np.empty((self.config.n_mels, count), dtype=np.float32)
        first_cached = self._next - self._frames.shape[0]
        g = start // self._hop
        out[:, lo : hi + 1] = self._frames[g + lo - first_cached : g + hi + 1 - first_cached].T
        # Edge frames from short stretches at each end: the head's first ``lo`` frames and, from a
        # tail starting ``hi + 1 - lo`` frames in, the frames after ``lo`` see exactly the
        # window's own reflect padding and nothing of the stretch's other end.
        head = audio[: min(length, lo * self._hop + self.config.n_fft)]
        out[:, :lo] = log_mel(head, self.config)[:, :lo]
        out[:, hi + 1 :] = log_mel(audio[offset:], self.config)[:, lo:]
        return out
