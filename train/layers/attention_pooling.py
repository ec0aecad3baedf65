"""Multi-head attention pooling head (PSLA, Gong et al. 2021), one of EfficientAT's MN heads."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MultiHeadAttentionPooling"]


class MultiHeadAttentionPooling(nn.Module):
    """Pool (B, C, F, T) over frequency, then attention-weighted over time per head and class."""

    def __init__(self, in_dim: int, out_dim: int, num_heads: int = 4, epsilon: float = 1e-7) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.num_heads = num_heads
        self.epsilon = epsilon
        self.subspace_proj = nn.Linear(in_dim, out_dim * 2 * num_heads)
        self.head_weight = nn.Parameter(torch.full((1, num_heads, 1), 1.0 / num_heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.mean(dim=2).transpose(1, 2)  # (B, T, C)
        b, n, _ = x.shape
        x = self.subspace_proj(x).reshape(b, n, 2, self.num_heads, self.out_dim).permute(2, 0, 3, 1, 4)
        att, val = x[0], x[1]  # (B, heads, T, classes)
        att = torch.clamp(torch.sigmoid(att), self.epsilon, 1.0 - self.epsilon)
        att = att / att.sum(dim=2, keepdim=True)
        out = (att * val).sum(dim=2) * self.head_weight
        return out.sum(dim=1)
