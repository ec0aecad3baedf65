"""The torch side: EfficientAT-compatible MobileNetV3 and DyMN, the torch frontend, checkpoints.

    from dymn_edge.train import load_checkpoint
    loaded = load_checkpoint("mn04_as_mAP_432.pt")   # architecture inferred from the file
    logits, embedding = loaded.model(mel)             # mel: (B, 1, 128, frames)
"""

from .checkpoint import LoadedModel, infer_config, load_checkpoint, save_checkpoint
from .frontend import MelSTFT, TorchLogMel
from .models import DyMN, DyMNConfig, MNConfig, MobileNetV3, build_model, create_model

__all__ = [
    "DyMN",
    "DyMNConfig",
    "LoadedModel",
    "MNConfig",
    "MelSTFT",
    "MobileNetV3",
    "TorchLogMel",
    "build_model",
    "create_model",
    "infer_config",
    "load_checkpoint",
    "save_checkpoint",
]
