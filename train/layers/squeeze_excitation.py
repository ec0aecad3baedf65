"""Squeeze-and-excitation over channels, frequency or time (EfficientAT's MobileNetV3 blocks).

The excitation uses Linear layers ``fc1``/``fc2`` and a plain sigmoid, as the published "mn"
checkpoints do. Several SE layers can run concurrently (one per dimension), merged by max,
mean, sum or min.
"""

from __future__ import annotations

import torch
from torch import nn

from .helpers import make_divisible

__all__ = ["SqueezeExcitation", "ConcurrentSE", "SE_DIMS"]

SE_DIMS = {"c": 1, "f": 2, "t": 3}  # tensor axis of each SE dimension in (B, C, F, T)


class SqueezeExcitation(nn.Module):
    """Rescale ``x`` along one axis by sigmoid(fc2(relu(fc1(mean over the other axes))))."""

    def __init__(self, input_dim: int, squeeze_dim: int, se_dim: int) -> None:
        super().__init__()
        if se_dim not in (1, 2, 3):
            raise ValueError(f"se_dim must be 1 (channels), 2 (frequency) or 3 (time), got {se_dim}")
        self.fc1 = nn.Linear(input_dim, squeeze_dim)
        self.fc2 = nn.Linear(squeeze_dim, input_dim)
        self.se_dim = se_dim
        self.pool_dims = [d for d in (1, 2, 3) if d != se_dim]
        self.activation = nn.ReLU()
        self.scale_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean(self.pool_dims, keepdim=True)  # size 1 everywhere but batch and se_dim
        shape = scale.shape
        scale = scale.movedim(self.se_dim, -1).flatten(1)  # (B, D)
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(scale))))
        return x * scale.view(shape)


class ConcurrentSE(nn.Module):
    """One SE layer per requested dimension, outputs merged elementwise."""

    _AGGREGATIONS = ("max", "avg", "add", "min")

    def __init__(self, c_dim: int, f_dim: int, t_dim: int, se_dims: list[int], se_agg: str, se_r: int) -> None:
        super().__init__()
        if se_agg not in self._AGGREGATIONS:
            raise ValueError(f"se_agg must be one of {self._AGGREGATIONS}, got {se_agg!r}")
        sizes = {1: c_dim, 2: f_dim, 3: t_dim}
        self.conc_se_layers = nn.ModuleList(
            SqueezeExcitation(sizes[d], make_divisible(sizes[d] // se_r, 8), d) for d in se_dims
        )
        self.se_agg = se_agg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [layer(x) for layer in self.conc_se_layers]
        if len(outs) == 1:
            return outs[0]
        stacked = torch.stack(outs, dim=0)
        if self.se_agg == "max":
            return stacked.max(dim=0).values
        if self.se_agg == "min":
            return stacked.min(dim=0).values
        if self.se_agg == "avg":
            return stacked.mean(dim=0)
        return stacked.sum(dim=0)
