"""Dynamic MobileNet (DyMN): Schmid, Koutini, Widmer, "Dynamic Convolutional Neural Networks as
Efficient Pre-trained Audio Models", IEEE/ACM TASLP 2024, arXiv 2310.15648.

Every block (or, with ``use_dy_blocks="replace_se"``, the blocks where MobileNetV3 has SE)
becomes a dynamic block: a context generator feeds dynamic convolutions (K kernels), Dy-ReLU-B
and coordinate attention. State-dict layout equals EfficientAT's ``models/dymn/model.py``
(``layers.*`` registered before the stem ``in_c``, then ``out_c`` and ``classifier``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..layers import ContextGen, ConvNormAct, CoordAtt, DynamicConv, DynamicWrapper, DyReLUB, batch_norm, make_divisible
from ._heads import init_weights, make_head
from .config import DyMNConfig, block_settings, last_channel
from .mn import InvertedResidual

__all__ = ["DyMN", "DynamicBlock"]

# Blocks that stay dynamic under use_dy_blocks="replace_se" (MobileNetV3's SE positions).
_REPLACE_SE = (3, 4, 5, 10, 11, 12, 13, 14)


class DynamicBlock(nn.Module):
    """Context -> dynamic 1x1 expand -> dynamic depthwise -> Dy-ReLU -> coord. attention -> dynamic 1x1 project."""

    def __init__(self, s: dict[str, Any], width_mult: float, config: DyMNConfig) -> None:
        super().__init__()
        cin, cexp, cout = s["input_channels"], s["expanded_channels"], s["out_channels"]
        self.use_res_connect = s["stride"] == 1 and cin == cout
        self.context_dim = int(
            np.clip(
                make_divisible(cexp // config.context_ratio, 8),
                make_divisible(config.min_context_size * width_mult, 8),
                make_divisible(config.max_context_size * width_mult, 8),
            )
        )
        h = self.context_dim
        act = nn.Hardswish if s["use_hs"] else nn.ReLU
        k, schedule = config.dyconv_k, config.temp_schedule

        def conv(c_in: int, c_out: int, kernel: int, **kw: Any) -> nn.Module:
            if config.no_dyconv:
                return DynamicWrapper(nn.Conv2d(c_in, c_out, kernel, bias=False, **kw))
            return DynamicConv(c_in, c_out, h, kernel, k=k, temp_schedule=schedule, **kw)

        if cexp != cin:
            self.exp_conv = conv(cin, cexp, 1)
            self.exp_norm = batch_norm(cexp)
            self.exp_act = DynamicWrapper(act(inplace=True))
        else:
            self.exp_conv = DynamicWrapper(nn.Identity())
            self.exp_norm = nn.Identity()
            self.exp_act = DynamicWrapper(nn.Identity())
        stride = 1 if s["dilation"] > 1 else s["stride"]
        padding = (s["kernel"] - 1) // 2 * s["dilation"]
        self.depth_conv = conv(cexp, cexp, s["kernel"], groups=cexp, stride=stride, dilation=s["dilation"], padding=padding)
        self.depth_norm = batch_norm(cexp)
        self.depth_act = DynamicWrapper(act(inplace=True)) if config.no_dyrelu else DyReLUB(cexp, h, M=config.dyrelu_k)
        self.ca = DynamicWrapper(nn.Identity()) if config.no_ca else CoordAtt()
        self.proj_conv = conv(cexp, cout, 1)
        self.proj_norm = batch_norm(cout)
        self.context_gen = ContextGen(h, cin, cexp, norm_layer=batch_norm, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.context_gen(x)
        out = self.exp_act(self.exp_norm(self.exp_conv(x, g)), g)
        out = self.depth_act(self.depth_norm(self.depth_conv(out, g)), g)
        out = self.ca(out, g)
        out = self.proj_norm(self.proj_conv(out, g))
        return out + x if self.use_res_connect else out


class DyMN(nn.Module):
    """forward(x) -> (logits (B, classes), embedding (B, C_last)); x is (B, 1, n_mels, frames)."""

    def __init__(self, config: DyMNConfig) -> None:
        super().__init__()
        self.config = config
        settings = block_settings(config)
        dynamic = [True] * 15 if config.use_dy_blocks == "all" else [i in _REPLACE_SE for i in range(15)]
        self.layers = nn.ModuleList()  # registered before in_c: EfficientAT's key order
        self.in_c = ConvNormAct(
            config.in_channels,
            settings[0]["input_channels"],
            config.in_conv_kernel,
            stride=config.in_conv_stride,
            activation_layer=nn.Hardswish,
        )
        for s, is_dynamic in zip(settings, dynamic):
            # Static blocks of a "replace_se" DyMN carry no SE (EfficientAT passes no SE config).
            self.layers.append(DynamicBlock(s, config.width_mult, config) if is_dynamic else InvertedResidual(s, None))
        c_last = settings[-1]["out_channels"]
        self.out_c = ConvNormAct(c_last, 6 * c_last, 1, activation_layer=nn.Hardswish)
        self.classifier = make_head(config.head_type, 6 * c_last, last_channel(config), config.num_classes, config.dropout)
        init_weights(self)

    @property
    def embedding_dim(self) -> int:
        return self.out_c.out_channels

    def dynamic_convs(self) -> list[DynamicConv]:
        return [m for m in self.modules() if isinstance(m, DynamicConv)]

    @property
    def temperature(self) -> float | None:
        convs = self.dynamic_convs()
        return convs[0].temperature if convs else None

    def set_temperature(self, temperature: float) -> None:
        """Fix the attention temperature of every dynamic conv (1.0 for trained AudioSet models)."""
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        for m in self.dynamic_convs():
            m.temperature = float(temperature)

    def update_params(self, epoch: float) -> None:
        """Advance the temperature schedule to ``epoch`` (EfficientAT's name for it)."""
        for m in self.dynamic_convs():
            m.update_params(epoch)

    def forward(self, x: torch.Tensor, return_fmaps: bool = False):
        fmaps = []
        x = self.in_c(x)
        if return_fmaps:
            fmaps.append(x)
        for layer in self.layers:
            x = layer(x)
            if return_fmaps:
                fmaps.append(x)
        x = self.out_c(x)
        if return_fmaps:
            fmaps.append(x)
        embedding = F.adaptive_avg_pool2d(x, 1).flatten(1)
        logits = self.classifier(x).flatten(1)
        return (logits, fmaps) if return_fmaps else (logits, embedding)
