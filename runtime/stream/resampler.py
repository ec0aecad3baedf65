"""Streaming mix-down and resampling to the model rate, with filter state kept across blocks.

Resampling each block on its own would restart the filter at every block edge and click there;
soxr's ``ResampleStream`` carries its state, so the concatenated output equals resampling the
whole signal at once (tested). Channels are averaged first (resampling is linear, so the order
does not change the result, and one channel is cheaper than several).
"""

from __future__ import annotations

import numpy as np
import soxr

from ..audio import RESAMPLE_QUALITY
from ..frontend import SAMPLE_RATE

__all__ = ["StreamResampler"]


class StreamResampler:
    def __init__(self, rate_in: int, rate_out: int = SAMPLE_RATE) -> None:
        if rate_in <= 0:
            raise ValueError(f"input sample rate must be positive, got {rate_in}")
        self.rate_in, self.rate_out = int(rate_in), int(rate_out)
        self._stream = None if self.rate_in == self.rate_out else soxr.ResampleStream(
            self.rate_in, self.rate_out, 1, dtype="float32", quality=RESAMPLE_QUALITY)

    def process(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        """(frames,) or (frames, channels) at ``rate_in`` -> mono float32 at ``rate_out``."""
        mono = block.mean(axis=1, dtype=np.float32) if block.ndim == 2 else block.astype(np.float32, copy=False)
        if self._stream is None:
            return np.ascontiguousarray(mono)
        return self._stream.resample_chunk(np.ascontiguousarray(mono), last=last)

    def flush(self) -> np.ndarray:
        """The samples still inside the filter at the end of the stream."""
        return self.process(np.zeros(0, dtype=np.float32), last=True)

    def reset(self) -> None:
        """Forget the filter state (after a gap in the input)."""
        if self._stream is not None:
            self._stream.clear()
