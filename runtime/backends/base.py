"""The one small interface every inference backend implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Backend"]


@runtime_checkable
class Backend(Protocol):
    """Runs a model on log-mel features.

    ``infer`` takes (batch, 1, n_mels, frames) float32 and returns logits (batch, classes)
    float32. ``max_batch`` is None when any batch size works, else the fixed batch size the
    model was exported with (DyMN's faithful export folds the batch into conv groups).
    ``input_shape`` and ``output_shape`` are what the model file declares (int, or None where dynamic).
    """

    name: str
    max_batch: int | None
    input_shape: list[int | None]
    output_shape: list[int | None]

    def infer(self, features: np.ndarray) -> np.ndarray: ...
