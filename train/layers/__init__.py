"""Building blocks of MobileNetV3 and DyMN; layers never import models."""

from .attention_pooling import MultiHeadAttentionPooling
from .context import ContextGen, CoordAtt, DynamicWrapper
from .conv_norm_act import ConvNormAct, batch_norm
from .dynamic_conv import DynamicConv, scheduled_temperature
from .dyrelu import DyReLUB
from .helpers import conv_out_size, make_divisible
from .squeeze_excitation import ConcurrentSE, SqueezeExcitation

__all__ = [
    "ConcurrentSE",
    "ContextGen",
    "ConvNormAct",
    "CoordAtt",
    "DyReLUB",
    "DynamicConv",
    "DynamicWrapper",
    "MultiHeadAttentionPooling",
    "SqueezeExcitation",
    "batch_norm",
    "conv_out_size",
    "make_divisible",
    "scheduled_temperature",
]
