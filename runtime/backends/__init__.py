"""Inference backends behind one interface; each is imported only when asked for."""

from __future__ import annotations

import logging
from pathlib import Path

from ..audio import seconds_to_samples
from ..bundle import Bundle
from ..errors import BackendUnavailableError, BundleError
from ..frontend import n_frames
from .base import Backend

__all__ = ["BACKENDS", "Backend", "check_against_manifest", "create_backend"]

logger = logging.getLogger(__name__)

# torch lives on the train side; the runtime only names it so errors can say where it is.
BACKENDS = ("onnxruntime", "openvino", "tensorrt", "fused", "torch")


def check_against_manifest(backend: Backend, bundle: Bundle) -> None:
    """The model file must declare what the manifest promises: (batch, 1, n_mels, frames) -> (batch, classes)."""
    declared = bundle.manifest.get("inputs", [{}])[0].get("shape")
    expected_in = [None, 1, bundle.frontend.n_mels, None]
    if declared and isinstance(declared[0], int):
        expected_in[0] = declared[0]
    problems = []
    # A backend that takes any batch (None) serves a manifest that fixes one; the other dims must agree.
    agree = [a == e or e is None or (i == 0 and a is None) for i, (a, e) in enumerate(zip(backend.input_shape, expected_in))]
    if len(backend.input_shape) != 4 or not all(agree):
        problems.append(f"input {backend.input_shape}, manifest expects {expected_in}")
    if len(backend.output_shape) != 2 or backend.output_shape[1] != bundle.num_classes:
        problems.append(f"output {backend.output_shape}, manifest says {bundle.num_classes} classes")
    if problems:
        raise BundleError(f"{bundle.path}: model does not match its manifest: " + "; ".join(problems))


def create_backend(name: str, bundle: Bundle, *, threads: int | None = None, device: str | None = None, spin: bool = True) -> Backend:
    """Open the bundle's model on backend ``name`` (onnxruntime, openvino, tensorrt or fused), checked against the manifest.

    ``spin=False`` stops ONNX Runtime's idle threads from busy-waiting between runs: right for a
    stream that runs the model once a hop, wrong for back-to-back batch work.
    """
    backend = _open(name, bundle, threads=threads, device=device, spin=spin)
    check_against_manifest(backend, bundle)
    return backend


def _open(name: str, bundle: Bundle, *, threads: int | None, device: str | None, spin: bool = True) -> Backend:
    if name == "onnxruntime":
        from ..machine import x86_without_vnni
        from .onnxruntime import open_onnxruntime

        if bundle.manifest.get("quantization", {}).get("activations") == "uint8" and x86_without_vnni():
            logger.warning("%s: its uint8 activations can saturate in ONNX Runtime's integer kernels on this CPU, which has no VNNI; "
                           "on an AVX2 CPU mn04_as kept FP32's top 5 in 0.935 of the ESC-50 clips instead of 0.959 "
                           "(docs/calibration.md). Calibrate with --activations int8 for this machine.", bundle.path)
        backend = open_onnxruntime(bundle.require("onnx"), bundle.file("onnx_nchwc"), threads=threads, spin=spin, device=device)
        if bundle.precision == "int8" and backend.providers[0] == "CUDAExecutionProvider":
            logger.warning("%s: ONNX Runtime's CUDA provider has no integer convolutions, so this INT8 bundle's quantize/dequantize "
                           "pairs run in float: on an H200 INT8 took 1.13x (mn04_as) and 1.30x (dymn04_edge) the FP32 bundle's time "
                           "(docs/benchmarks.md). On an NVIDIA GPU run the FP32 bundle, or INT8 through TensorRT "
                           "(calibrate --backend tensorrt, then export tensorrt).", bundle.path)
        return backend
    if name == "openvino":
        from .openvino import OpenVinoBackend

        model: Path = bundle.file("openvino_xml") or bundle.file("onnx_openvino") or bundle.require("onnx")
        # FP32 bundles stay FP32 on every device. On CPU, half-precision weights are decompressed
        # to f32 too (the CPU plugin would otherwise compute in bf16: 0.45 logit error on mn04);
        # GPU and NPU keep their native half precision.
        device = device or "CPU"
        precision = "f32" if bundle.precision == "fp32" or device.startswith("CPU") else None
        window = n_frames(seconds_to_samples(bundle.window_s, bundle.frontend.sample_rate_hz), bundle.frontend)
        return OpenVinoBackend(model, threads=threads, device=device, precision=precision, static_frames=window)
    if name == "tensorrt":
        from .tensorrt import TensorRTBackend

        hint = ("; TensorRT engines are built on the device that runs them: "
                f"dymn-edge export tensorrt {bundle.path} --out BUNDLE_TRT")
        return TensorRTBackend(bundle.require("tensorrt_engine", hint=hint), bundle.manifest.get("tensorrt"), bundle_path=bundle.path)
    if name == "fused":
        from .fused import FusedBackend

        record = bundle.manifest.get("fused") or {}
        why = f"; this one has none because {record['reason']}" if record.get("reason") else ""
        hint = f" (the fused backend runs DyMN and MobileNetV3 bundles that carry model.fused.npz, which dymn-edge export onnx writes{why})"
        return FusedBackend(bundle.require("fused_weights", hint=hint), n_mels=bundle.frontend.n_mels, threads=threads)
    if name == "torch":
        raise BackendUnavailableError("the torch backend lives in dymn_edge.train (pip install \"dymn-edge[train]\")")
    raise BackendUnavailableError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
