"""The torch inference path: EfficientAT models in eager PyTorch behind the runtime's Backend interface.

It pairs with the torch frontend (``TorchLogMel``), so ``--backend torch`` is a complete,
independent reference path to compare the numpy + ONNX Runtime path against.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dymn_edge.runtime.bundle import Bundle
from dymn_edge.runtime.labels import LabelSet, audioset_labels
from dymn_edge.runtime.tagging import Tagger

from .checkpoint import LoadedModel, load_checkpoint
from .frontend import TorchLogMel

__all__ = ["TorchBackend", "torch_tagger"]


class TorchBackend:
    name = "torch"
    max_batch = None

    def __init__(self, model: nn.Module, *, threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.model = model.eval()

    def infer(self, features: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)))[0].numpy()


def torch_tagger(source: str | LoadedModel | Bundle, *, name: str | None = None, expect: dict | None = None, threads: int | None = None) -> Tagger:
    """A Tagger running a checkpoint (or a bundle's checkpoint) in eager PyTorch with the torch frontend."""
    labels: LabelSet | None = None
    frontend_config = None
    if isinstance(source, Bundle):
        path = source.require("checkpoint", hint="; use --backend onnxruntime or openvino for this bundle")
        arch = source.architecture
        expect = {k: arch[k] for k in ("width_mult", "num_classes") if k in arch} | {"family": source.family}
        loaded = load_checkpoint(path, expect=expect, temperature=source.manifest.get("temperature"))
        labels, frontend_config, name = source.labels, source.frontend, name or source.name
    else:
        loaded = source if isinstance(source, LoadedModel) else load_checkpoint(source, expect=expect)
    if labels is None:
        n = loaded.config.num_classes
        labels = audioset_labels() if n == 527 else LabelSet.placeholder(n)
    frontend = TorchLogMel(frontend_config) if frontend_config else TorchLogMel()
    return Tagger(
        frontend, TorchBackend(loaded.model, threads=threads), labels,
        model_name=name or loaded.path.stem, sample_rate_hz=frontend.config.sample_rate_hz,
    )
