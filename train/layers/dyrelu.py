"""Dynamic ReLU, variant B (channel-wise coefficients; Chen et al. 2020), as DyMN uses it.

For each channel c, M linear pieces ``a_m x + b_m`` whose coefficients come from the context
vector: theta = 2 sigmoid(Linear(h_c)) - 1, coefficients = theta * lambdas + init_v, output
= max_m(a_m x + b_m). With theta = 0 this is the identity-like ``max(x, 0*x)`` = ReLU.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DyReLUB"]


class DyReLUB(nn.Module):
    def __init__(self, channels: int, context_dim: int, M: int = 2) -> None:
        super().__init__()
        self.channels = channels
        self.M = M
        # EfficientAT first builds a (context_dim -> 2M) Linear and then replaces it; building and
        # dropping it here draws the same random numbers, so seeded initialisations stay identical.
        nn.Linear(context_dim, 2 * M)
        self.coef_net = nn.Sequential(nn.Linear(context_dim, 2 * M * channels))
        self.sigmoid = nn.Sigmoid()
        # Persistent buffers: EfficientAT checkpoints carry them.
        self.register_buffer("lambdas", torch.tensor([1.0] * M + [0.5] * M))
        self.register_buffer("init_v", torch.tensor([1.0] + [0.0] * (2 * M - 1)))

    def coefficients(self, context: torch.Tensor) -> torch.Tensor:
        """Slopes then offsets, (B, C, 1, 1, 2M)."""
        theta = 2 * self.sigmoid(self.coef_net(context.reshape(context.shape[0], -1))) - 1
        return theta.view(-1, self.channels, 1, 1, 2 * self.M) * self.lambdas + self.init_v

    def forward(self, x: torch.Tensor, g: tuple[torch.Tensor, ...]) -> torch.Tensor:
        coefs = self.coefficients(g[0])
        if self.M == 2:  # two explicit pieces: cheaper than stacking and reducing
            return torch.maximum(x * coefs[..., 0] + coefs[..., 2], x * coefs[..., 1] + coefs[..., 3])
        mapped = x.unsqueeze(-1) * coefs[..., : self.M] + coefs[..., self.M :]
        return mapped.max(dim=-1).values
