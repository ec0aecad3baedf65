"""A bounded ring of audio frames between the audio callback and the pipeline.

The callback must never block or allocate much: it copies its block in under a short lock and
returns. When the reader falls behind by more than the capacity, the oldest frames are
overwritten and counted, and every read says at which absolute frame it starts, so the loss
shows up as a gap in stream time instead of silently shifting every later timestamp.
"""

from __future__ import annotations

import threading

import numpy as np

__all__ = ["FrameRing"]


class FrameRing:
    def __init__(self, capacity_frames: int, channels: int) -> None:
        if capacity_frames < 1 or channels < 1:
            raise ValueError(f"capacity and channels must be positive, got {capacity_frames}, {channels}")
        self._buf = np.zeros((capacity_frames, channels), dtype=np.float32)
        self._capacity = capacity_frames
        self._written = 0  # absolute frames ever written
        self._read = 0  # absolute index of the next frame to read
        self._cond = threading.Condition(threading.Lock())
        self.dropped_frames = 0
        self.closed = False

    @property
    def capacity(self) -> int:
        return self._capacity

    def write(self, block: np.ndarray) -> None:
        """Append (frames, channels) samples; called from the audio thread."""
        n = block.shape[0]
        with self._cond:
            if n >= self._capacity:  # a block larger than the ring keeps only its newest part
                block, skipped = block[-self._capacity :], n - self._capacity
                self._written += skipped
                n = self._capacity
            start = self._written % self._capacity
            first = min(n, self._capacity - start)
            self._buf[start : start + first] = block[:first]
            self._buf[: n - first] = block[first:]
            self._written += n
            overrun = self._written - self._read - self._capacity
            if overrun > 0:
                self.dropped_frames += overrun
                self._read += overrun
            self._cond.notify()

    def read(self, timeout: float | None = None) -> tuple[int, np.ndarray]:
        """Everything available: (absolute index of its first frame, (frames, channels) copy).

        Waits up to ``timeout`` seconds for data; returns an empty block on timeout or after close().
        """
        with self._cond:
            if self._written == self._read and not self.closed:
                self._cond.wait(timeout)
            start, n = self._read, self._written - self._read
            idx = (start + np.arange(n)) % self._capacity if n else np.zeros(0, dtype=np.int64)
            out = self._buf[idx].copy()
            self._read += n
            return start, out

    def discard(self) -> None:
        """Forget everything not read yet (stale audio from before a restart)."""
        with self._cond:
            self._read = self._written

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
