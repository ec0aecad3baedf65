"""EfficientAT's MobileNetV3 for audio ("mn"): the teacher, the baseline, and the family with
official AudioSet weights (Schmid et al., "Efficient Large-scale Audio Tagging via
Transformer-to-CNN Knowledge Distillation", ICASSP 2023, arXiv 2211.04772).

State-dict layout equals EfficientAT's ``models/mn/model.py``: ``features.0`` stem,
``features.1..15`` blocks (``features.i.block.j``), ``features.16`` final 1x1 conv, ``classifier``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import ConcurrentSE, ConvNormAct, conv_out_size
from ..layers.squeeze_excitation import SE_DIMS
from ._heads import init_weights, make_head
from .config import MNConfig, block_settings, last_channel

__all__ = ["MobileNetV3", "InvertedResidual"]


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise -> optional SE -> project (1x1), residual when shapes allow."""

    def __init__(self, s: dict[str, Any], se: dict[str, Any] | None) -> None:
        super().__init__()
        self.use_res_connect = s["stride"] == 1 and s["input_channels"] == s["out_channels"]
        act = nn.Hardswish if s["use_hs"] else nn.ReLU
        layers: list[nn.Module] = []
        if s["expanded_channels"] != s["input_channels"]:
            layers.append(ConvNormAct(s["input_channels"], s["expanded_channels"], 1, activation_layer=act))
        stride = 1 if s["dilation"] > 1 else s["stride"]
        layers.append(
            ConvNormAct(
                s["expanded_channels"],
                s["expanded_channels"],
                s["kernel"],
                stride=stride,
                dilation=s["dilation"],
                groups=s["expanded_channels"],
                activation_layer=act,
            )
        )
        if s["use_se"] and se is not None:
            layers.append(ConcurrentSE(s["expanded_channels"], s["f_dim"], s["t_dim"], **se))
        layers.append(ConvNormAct(s["expanded_channels"], s["out_channels"], 1, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = s["out_channels"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


class MobileNetV3(nn.Module):
    """forward(x) -> (logits (B, classes), embedding (B, C_last)); x is (B, 1, n_mels, frames)."""

    def __init__(self, config: MNConfig) -> None:
        super().__init__()
        self.config = config
        settings = block_settings(config)
        se = None
        if config.se_dims != "none":
            se = dict(se_dims=[SE_DIMS[d] for d in config.se_dims], se_agg=config.se_agg, se_r=config.se_r)
        f_dim = conv_out_size(config.input_dim_f, 1, 1, 3, 2)
        t_dim = conv_out_size(config.input_dim_t, 1, 1, 3, 2)
        layers: list[nn.Module] = [
            ConvNormAct(
                config.in_channels,
                settings[0]["input_channels"],
                config.in_conv_kernel,
                stride=config.in_conv_stride,
                activation_layer=nn.Hardswish,
            )
        ]
        for s in settings:
            pad = (s["kernel"] - 1) // 2 * s["dilation"]
            f_dim = conv_out_size(f_dim, pad, s["dilation"], s["kernel"], s["stride"])
            t_dim = conv_out_size(t_dim, pad, s["dilation"], s["kernel"], s["stride"])
            layers.append(InvertedResidual({**s, "f_dim": f_dim, "t_dim": t_dim}, se))
        c_last = settings[-1]["out_channels"]
        layers.append(ConvNormAct(c_last, 6 * c_last, 1, activation_layer=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.classifier = make_head(
            config.head_type, 6 * c_last, last_channel(config), config.num_classes, config.dropout,
            config.multihead_attention_heads,
        )
        init_weights(self)

    @property
    def embedding_dim(self) -> int:
        return self.features[-1].out_channels

    def forward(self, x: torch.Tensor, return_fmaps: bool = False):
        fmaps = []
        for layer in self.features:
            x = layer(x)
            if return_fmaps:
                fmaps.append(x)
        embedding = F.adaptive_avg_pool2d(x, 1).flatten(1)
        logits = self.classifier(x).flatten(1)
        return (logits, fmaps) if return_fmaps else (logits, embedding)
