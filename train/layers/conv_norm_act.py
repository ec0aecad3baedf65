"""Conv2d -> BatchNorm -> activation, laid out as torchvision's ConvNormActivation.

EfficientAT builds its stem, 1x1 convs and MobileNet blocks from torchvision's class; we keep
its ``nn.Sequential`` layout so the state-dict keys (``…0.weight``, ``…1.running_mean``) match
the published checkpoints, without depending on torchvision.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

from torch import nn

__all__ = ["ConvNormAct", "batch_norm"]

# EfficientAT uses eps=1e-3 and momentum=0.01 for every BatchNorm.
batch_norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)


class ConvNormAct(nn.Sequential):
    """Square-kernel conv with "same" padding, optional norm (then no conv bias), optional activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        norm_layer: Callable[[int], nn.Module] | None = batch_norm,
        activation_layer: Callable[..., nn.Module] | None = nn.ReLU,
    ) -> None:
        padding = (kernel_size - 1) // 2 * dilation
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding,
                dilation=dilation,
                groups=groups,
                bias=norm_layer is None,
            )
        ]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if activation_layer is not None:
            layers.append(activation_layer(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_channels
