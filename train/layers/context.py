"""Context generation and coordinate attention of the DyMN block.

``ContextGen`` pools the block input over time (a frequency sequence) and over frequency
(a time sequence), transforms both with one shared 1x1 conv + BN + Hardswish, and yields
  g[0]  the context vector h_c (B, H, 1, 1): mean over all F+T positions, which steers
        dynamic convolution and Dy-ReLU;
  g[1]  (B, C_exp, F', 1) and g[2] (B, C_exp, 1, T'): coordinate-attention sequences,
        pooled to the block's stride.
``CoordAtt`` rescales a feature map by sigmoid(g[1]) * sigmoid(g[2]).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

__all__ = ["ContextGen", "CoordAtt", "DynamicWrapper"]


class ContextGen(nn.Module):
    def __init__(
        self, context_dim: int, in_ch: int, exp_ch: int, norm_layer: Callable[[int], nn.Module], stride: int = 1
    ) -> None:
        super().__init__()
        self.joint_conv = nn.Conv2d(in_ch, context_dim, kernel_size=1, bias=False)
        self.joint_norm = norm_layer(context_dim)
        self.joint_act = nn.Hardswish(inplace=True)
        self.conv_f = nn.Conv2d(context_dim, exp_ch, kernel_size=1)
        self.conv_t = nn.Conv2d(context_dim, exp_ch, kernel_size=1)
        if stride > 1:
            self.pool_f = nn.AvgPool2d(kernel_size=(3, 1), stride=(stride, 1), padding=(1, 0))
            self.pool_t = nn.AvgPool2d(kernel_size=(1, 3), stride=(1, stride), padding=(0, 1))
        else:
            self.pool_f = nn.Identity()
            self.pool_t = nn.Identity()

    def forward(self, x: torch.Tensor, g=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Means, not adaptive_avg_pool2d(x, (None, 1)): same values, and they export with dynamic frames.
        cf = x.mean(dim=3, keepdim=True)  # (B, C, F, 1)
        ct = x.mean(dim=2, keepdim=True).permute(0, 1, 3, 2)  # (B, C, T, 1)
        f, t = cf.shape[2], ct.shape[2]
        joint = self.joint_act(self.joint_norm(self.joint_conv(torch.cat([cf, ct], dim=2))))
        h_cf, h_ct = torch.split(joint, [f, t], dim=2)
        h_c = joint.mean(dim=2, keepdim=True)  # weighted by F and T: one mean over all positions
        g_cf = self.conv_f(self.pool_f(h_cf))
        g_ct = self.conv_t(self.pool_t(h_ct.permute(0, 1, 3, 2)))
        return h_c, g_cf, g_ct


class CoordAtt(nn.Module):
    def forward(self, x: torch.Tensor, g: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return x * g[1].sigmoid() * g[2].sigmoid()


class DynamicWrapper(nn.Module):
    """Give a static module the (x, g) signature of the dynamic ones; key prefix ``module.``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor, g=None) -> torch.Tensor:
        return self.module(x)
