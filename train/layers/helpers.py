"""Channel arithmetic shared by every MobileNet-style model."""

from __future__ import annotations

import math

__all__ = ["make_divisible", "conv_out_size"]


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` without dropping more than 10 %.

    The TensorFlow MobileNet rule EfficientAT uses for every channel count, so widths like 0.4
    give the exact channel numbers of the published checkpoints.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def conv_out_size(size: int, padding: int, dilation: int, kernel: int, stride: int) -> int:
    """Output length of a convolution along one axis."""
    return math.floor((size + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1)
