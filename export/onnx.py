"""PyTorch -> ONNX bundle: export, check, verify numerical parity, write the manifest.

This is the faithful export ("grouped": DyMN's per-sample kernels are computed at run time and
applied as one grouped convolution with the batch folded into the groups, so a DyMN bundle has
a fixed batch of 1). MobileNetV3 models export with a dynamic batch. Both take any number of
frames. Parity against PyTorch is measured on realistic log-mels at export time and recorded in
the manifest; a bundle whose parity exceeds the tolerance is not written.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dymn_edge import __version__
from dymn_edge.runtime.bundle import Bundle, write_bundle
from dymn_edge.runtime.errors import ExportError
from dymn_edge.runtime.audio import load_audio
from dymn_edge.runtime.frontend import FrontendConfig, log_mel
from dymn_edge.runtime.labels import LabelSet, audioset_labels
from dymn_edge.runtime.registry import demo_clip_path
from dymn_edge.train.checkpoint import LoadedModel, load_checkpoint

__all__ = ["DEFAULT_OPSET", "PARITY_ATOL", "export_bundle", "export_onnx", "probe_features"]

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17
PARITY_ATOL = 1e-3  # max |logit difference| accepted between PyTorch and ONNX Runtime
SANE_LOGIT = 1e3  # |logit| above this on real audio means the model itself is numerically unstable there
INPUT_NAME, OUTPUT_NAMES = "mel", ("logits", "embedding")


def probe_features(seconds: float = 10.0, config: FrontendConfig = FrontendConfig()) -> np.ndarray:
    """Log-mel of real audio: the first ``seconds`` of the shipped demo recording (public domain).

    Random Gaussian "mels" are far outside what trained models see and make BN-heavy networks
    numerically explosive, which says nothing about export quality; real audio stays in range.
    Returns (1, 1, n_mels, frames) float32.
    """
    wave = load_audio(demo_clip_path(), config.sample_rate_hz)
    return log_mel(wave[: int(seconds * config.sample_rate_hz)], config)[None, None]


def export_onnx(model: nn.Module, path: str | Path, *, opset: int = DEFAULT_OPSET, dynamic_batch: bool | None = None) -> Path:
    """Trace ``model`` to ONNX with a dynamic frame axis (and batch axis unless it is DyMN).

    Returns the path; raises ExportError with the exporter's message on failure.
    """
    import onnx

    path = Path(path)
    is_dymn = getattr(getattr(model, "config", None), "family", "") == "dymn"
    if dynamic_batch is None:
        dynamic_batch = not is_dymn
    if dynamic_batch and is_dymn:
        raise ExportError("the grouped DyMN export folds the batch into conv groups, so its batch is fixed at 1")
    axes: dict[str, dict[int, str]] = {INPUT_NAME: {3: "frames"}}
    if dynamic_batch:
        axes = {INPUT_NAME: {0: "batch", 3: "frames"}, **{name: {0: "batch"} for name in OUTPUT_NAMES}}
    example = torch.from_numpy(probe_features())
    model = model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer chatter about Python bools and the legacy exporter
            torch.onnx.export(
                model, (example,), str(path), dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), dynamic_axes=axes,
            )
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
        onnx.save(onnx.shape_inference.infer_shapes(proto), str(path))
    except Exception as e:  # torch.onnx and onnx raise many unrelated types
        raise ExportError(f"ONNX export of {type(model).__name__} failed: {e}") from e
    return path


def _parity(model: nn.Module, onnx_path: Path, probes: list[np.ndarray]) -> float:
    """Max |logit difference| between PyTorch and ONNX Runtime over the probe inputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for x in probes:
        with torch.inference_mode():
            expected = model(torch.from_numpy(x))[0].numpy()
        scale = float(np.abs(expected).max())
        if not np.isfinite(scale) or scale > SANE_LOGIT:
            raise ExportError(
                f"PyTorch itself gives extreme logits (max |logit| {scale:.3g}) on the parity probe {x.shape}: "
                "the model is numerically unstable on this input, so parity cannot be judged; "
                "pass representative features (probe=...)"
            )
        got = session.run(["logits"], {INPUT_NAME: x})[0]
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def export_bundle(
    source: str | Path | LoadedModel,
    dest: str | Path,
    *,
    name: str | None = None,
    labels: LabelSet | None = None,
    window_s: float = 10.0,
    opset: int = DEFAULT_OPSET,
    include_checkpoint: bool = True,
    overwrite: bool = False,
    probe: np.ndarray | None = None,
    extra: dict[str, Any] | None = None,
) -> Bundle:
    """Export a checkpoint to an ONNX bundle (FP32, faithful "grouped" strategy for DyMN).

    Args:
        source: checkpoint path or an already loaded model.
        dest: bundle folder to write.
        name: model name in the manifest (default: the checkpoint's file stem).
        labels: class labels; default AudioSet's 527 when the model has 527 classes, else placeholders.
        window_s: the window length the runtime should feed the model.
        include_checkpoint: copy the checkpoint into the bundle so the torch backend can run it too.
        probe: (N, 1, n_mels, frames) features for the parity check; default: the demo clip at 10 s and 3.7 s.
    """
    loaded = source if isinstance(source, LoadedModel) else load_checkpoint(source)
    config = loaded.config
    if labels is None:
        labels = audioset_labels() if config.num_classes == 527 else LabelSet.placeholder(config.num_classes)
    if len(labels) != config.num_classes:
        raise ExportError(f"{len(labels)} labels given for a model with {config.num_classes} classes")
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(loaded.model, Path(tmp) / "model.onnx", opset=opset)
        if probe is not None:
            probes = [np.ascontiguousarray(probe[i : i + 1], dtype=np.float32) for i in range(len(probe))]
            probe_name = f"caller-supplied, {len(probes)} x {tuple(probe.shape[1:])}"
        else:
            probes, probe_name = [probe_features(10.0), probe_features(3.7)], "demo clip (10 s, 3.7 s)"
        parity = _parity(loaded.model, onnx_path, probes)
        if parity > PARITY_ATOL:
            raise ExportError(f"ONNX Runtime differs from PyTorch by {parity:.2e} in logits (tolerance {PARITY_ATOL:.0e})")
        logger.info("exported %s: max |logit diff| vs PyTorch %.2e", loaded.path, parity)
        files = {"model.onnx": (onnx_path, "onnx")}
        if include_checkpoint:
            files["model.pt"] = (loaded.path, "checkpoint")
        batch: int | str = "batch" if config.family == "mn" else 1
        metadata = {
            "name": name or loaded.path.stem,
            "family": config.family,
            "width": config.width_mult,
            "num_classes": config.num_classes,
            "architecture": config.to_dict(),
            "frontend": FrontendConfig().to_dict(),
            "window_s": window_s,
            "precision": "fp32",
            "export_strategy": "grouped" if config.family == "dymn" else "static",
            "temperature": loaded.temperature,
            "inputs": [{"name": INPUT_NAME, "shape": [batch, 1, 128, "frames"], "dtype": "float32"}],
            "outputs": [
                {"name": "logits", "shape": [batch, config.num_classes], "dtype": "float32"},
                {"name": "embedding", "shape": [batch, loaded.model.embedding_dim], "dtype": "float32"},
            ],
            "parity": {"reference": "pytorch", "max_abs_logit_diff": parity, "probe": probe_name},
            "producer": {
                "name": "dymn-edge", "version": __version__, "torch": torch.__version__,
                "onnx": onnx.__version__, "opset": opset,
            },
            "source": {"file": loaded.path.name, "sha256": loaded.sha256},
            **(extra or {}),
        }
        return write_bundle(dest, files, metadata, labels=labels, overwrite=overwrite)
