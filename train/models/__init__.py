"""Model families and a name-based factory (``create_model("dymn04")``)."""

from __future__ import annotations

import re

from torch import nn

from .config import DyMNConfig, MNConfig, ModelConfig, config_from_dict
from .dymn import DyMN
from .mn import MobileNetV3

__all__ = ["DyMN", "DyMNConfig", "MNConfig", "MobileNetV3", "ModelConfig", "build_model", "config_from_dict", "create_model", "parse_model_name"]


def build_model(config: ModelConfig) -> nn.Module:
    """Instantiate the architecture a config describes (random EfficientAT init)."""
    if isinstance(config, DyMNConfig):
        return DyMN(config)
    if isinstance(config, MNConfig):
        return MobileNetV3(config)
    raise TypeError(f"expected MNConfig or DyMNConfig, got {type(config).__name__}")


def parse_model_name(name: str) -> ModelConfig:
    """``mn04``, ``dymn10``, ``mn40_as`` -> config; the two digits are width x 10."""
    m = re.fullmatch(r"(dymn|mn)(\d{2})(_.*)?", name)
    if not m:
        raise ValueError(f"cannot parse model name {name!r}; expected e.g. mn04, mn10, dymn04, dymn20")
    family, digits = m.group(1), int(m.group(2))
    cls = DyMNConfig if family == "dymn" else MNConfig
    return cls(width_mult=digits / 10)


def create_model(name: str, **overrides) -> nn.Module:
    """Build a model by short name with config overrides, e.g. ``create_model("dymn04", num_classes=50)``."""
    config = parse_model_name(name)
    return build_model(type(config)(width_mult=config.width_mult, **overrides))
