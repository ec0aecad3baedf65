"""Architecture configs: the single description of a model, stored in bundles and our checkpoints.

Field names and defaults follow EfficientAT's ``get_model`` functions for each family, so a
config with defaults and a width builds exactly the published architecture.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

__all__ = ["ModelConfig", "MNConfig", "DyMNConfig", "config_from_dict", "BLOCK_SPECS"]

# MobileNetV3-Large body (in, kernel, expanded, out, activation, stride index or 1), width 1.0.
# stride "s0".."s3" take the model's ``strides``; HS is Hardswish, RE is ReLU.
BLOCK_SPECS = [
    (16, 3, 16, 16, "RE", 1),
    (16, 3, 64, 24, "RE", "s0"),
    (24, 3, 72, 24, "RE", 1),
    (24, 5, 72, 40, "RE", "s1"),
    (40, 5, 120, 40, "RE", 1),
    (40, 5, 120, 40, "RE", 1),
    (40, 3, 240, 80, "HS", "s2"),
    (80, 3, 200, 80, "HS", 1),
    (80, 3, 184, 80, "HS", 1),
    (80, 3, 184, 80, "HS", 1),
    (80, 3, 480, 112, "HS", 1),
    (112, 3, 672, 112, "HS", 1),
    (112, 5, 672, 160, "HS", "s3"),
    (160, 5, 960, 160, "HS", 1),
    (160, 5, 960, 160, "HS", 1),
]
MN_SE_BLOCKS = (3, 4, 5, 10, 11, 12, 13, 14)  # blocks with squeeze-excitation in MobileNetV3
HEAD_TYPES = ("mlp", "fully_convolutional", "multihead_attention_pooling")


@dataclass
class ModelConfig:
    """Options shared by both families."""

    family: ClassVar[str] = ""
    width_mult: float = 1.0
    num_classes: int = 527
    head_type: str = "mlp"
    strides: tuple[int, int, int, int] = (2, 2, 2, 2)
    reduced_tail: bool = False
    dilated: bool = False
    dropout: float = 0.2
    in_conv_kernel: int = 3
    in_conv_stride: int = 2
    in_channels: int = 1

    def __post_init__(self) -> None:
        self.strides = tuple(int(s) for s in self.strides)
        if len(self.strides) != 4 or any(s not in (1, 2) for s in self.strides):
            raise ValueError(f"strides must be four values of 1 or 2, got {self.strides}")
        if self.width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {self.width_mult}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.head_type not in self.head_types():
            raise ValueError(f"head_type must be one of {self.head_types()}, got {self.head_type!r}")

    @classmethod
    def head_types(cls) -> tuple[str, ...]:
        return HEAD_TYPES

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["strides"] = list(self.strides)
        return {"family": self.family, **d}

    @property
    def name(self) -> str:
        """Short name in EfficientAT's style: mn04, dymn10, mn40 (width x 10, two digits)."""
        return f"{self.family}{round(self.width_mult * 10):02d}"


@dataclass
class MNConfig(ModelConfig):
    """EfficientAT MobileNetV3 ("mn"): the teacher and baseline family."""

    family: ClassVar[str] = "mn"
    se_dims: str = "c"  # letters of c/f/t, or "none"
    se_agg: str = "max"
    se_r: int = 4
    input_dim_f: int = 128  # only frequency/time SE depend on the input size
    input_dim_t: int = 1000
    multihead_attention_heads: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.se_dims != "none" and (not self.se_dims or set(self.se_dims) - set("cft") or len(self.se_dims) > 3):
            raise ValueError(f"se_dims must be letters of 'cft' or 'none', got {self.se_dims!r}")


@dataclass
class DyMNConfig(ModelConfig):
    """Dynamic MobileNet: dynamic conv, Dy-ReLU and coordinate attention in every (or some) block."""

    family: ClassVar[str] = "dymn"
    context_ratio: int = 4
    max_context_size: int = 128
    min_context_size: int = 32
    dyrelu_k: int = 2
    dyconv_k: int = 4
    no_dyrelu: bool = False
    no_dyconv: bool = False
    no_ca: bool = False
    use_dy_blocks: str = "all"  # or "replace_se": dynamic blocks only where MobileNetV3 has SE
    temp_schedule: tuple[float, float, float, float] = (30.0, 1.0, 1.0, 0.02)  # T_max, T_min, T0_slope, T1_slope

    @classmethod
    def head_types(cls) -> tuple[str, ...]:
        return HEAD_TYPES[:2]

    def __post_init__(self) -> None:
        super().__post_init__()
        self.temp_schedule = tuple(float(v) for v in self.temp_schedule)
        if self.use_dy_blocks not in ("all", "replace_se"):
            raise ValueError(f"use_dy_blocks must be 'all' or 'replace_se', got {self.use_dy_blocks!r}")
        if self.dyconv_k < 1 or self.dyrelu_k < 1:
            raise ValueError(f"dyconv_k and dyrelu_k must be >= 1, got {self.dyconv_k}, {self.dyrelu_k}")

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["temp_schedule"] = list(self.temp_schedule)
        return d


_FAMILIES: dict[str, type[ModelConfig]] = {"mn": MNConfig, "dymn": DyMNConfig}


def config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """Rebuild a config from ``to_dict()`` output (bundle manifests, our checkpoints)."""
    d = dict(d)
    family = d.pop("family", None)
    if family not in _FAMILIES:
        raise ValueError(f"unknown model family {family!r}; expected one of {sorted(_FAMILIES)}")
    cls = _FAMILIES[family]
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown {family} config keys {sorted(unknown)}")
    return cls(**d)


def block_settings(config: ModelConfig) -> list[dict[str, Any]]:
    """Per-block channels, kernel, stride, dilation and activation after width scaling."""
    from ..layers.helpers import make_divisible

    divider = 2 if config.reduced_tail else 1
    dilation_tail = 2 if config.dilated else 1
    out = []
    for i, (cin, kernel, cexp, cout, act, stride) in enumerate(BLOCK_SPECS):
        if i >= 12:  # the tail (C4 stage) can be halved and dilated
            cout //= divider
            if i > 12:
                cin, cexp = cin // divider, cexp // divider
        stride = config.strides[int(stride[1])] if isinstance(stride, str) else stride
        out.append(
            dict(
                index=i,
                input_channels=make_divisible(cin * config.width_mult, 8),
                kernel=kernel,
                expanded_channels=make_divisible(cexp * config.width_mult, 8),
                out_channels=make_divisible(cout * config.width_mult, 8),
                use_hs=act == "HS",
                stride=stride,
                dilation=dilation_tail if i >= 12 else 1,
                use_se=i in MN_SE_BLOCKS,
            )
        )
    return out


def last_channel(config: ModelConfig) -> int:
    """Hidden width of the MLP head."""
    from ..layers.helpers import make_divisible

    return make_divisible(1280 // (2 if config.reduced_tail else 1) * config.width_mult, 8)


