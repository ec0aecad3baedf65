"""Classifier heads shared by MobileNetV3 and DyMN (key layout ``classifier.N.*`` as in EfficientAT)."""

from __future__ import annotations

from torch import nn

from ..layers import MultiHeadAttentionPooling

__all__ = ["make_head"]


def make_head(head_type: str, in_channels: int, hidden: int, num_classes: int, dropout: float, heads: int = 4) -> nn.Module:
    if head_type == "mlp":
        return nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(start_dim=1),
            nn.Linear(in_channels, hidden),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(hidden, num_classes),
        )
    if head_type == "fully_convolutional":
        return nn.Sequential(
            nn.Conv2d(in_channels, num_classes, kernel_size=1, bias=False),
            nn.BatchNorm2d(num_classes),
            nn.AdaptiveAvgPool2d((1, 1)),
        )
    if head_type == "multihead_attention_pooling":
        return MultiHeadAttentionPooling(in_channels, num_classes, num_heads=heads)
    raise ValueError(f"unknown head_type {head_type!r}")


def init_weights(model: nn.Module) -> None:
    """EfficientAT's init: kaiming fan-out convs, unit norms, N(0, 0.01) linears."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
