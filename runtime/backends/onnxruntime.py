"""ONNX Runtime backend: the default on every device (CPU; CUDA when onnxruntime-gpu has it)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import sys
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailableError, BundleError

__all__ = ["DEVICES", "NCHWC_ENV", "NCHWC_FILE", "NCHWC_FORMAT", "nchwc_outdated", "OnnxRuntimeBackend", "open_onnxruntime",
           "preferred_providers", "provider_options", "tensorrt_loadable"]

logger = logging.getLogger(__name__)

NCHWC_FILE = "model.nchwc.onnx"  # runtime/nchwc.py: model.onnx with ONNX Runtime's blocked depthwise kernels
# Its manifest record's "format". 1 (no field): ReorderOutput cut the padded channels itself, which ONNX
# Runtime refuses at run time where the padding is a whole block (AVX2's 8 of 16); 2: a Slice cuts them.
NCHWC_FORMAT = 2
NCHWC_ENV = "DYMN_EDGE_NCHWC"  # "0": run the portable model.onnx even where model.nchwc.onnx would load

# Execution providers in order of preference; only those this onnxruntime build has are used
# (onnxruntime-gpu on a Jetson or an NVIDIA GPU has TensorRT and CUDA; PyPI's CPU wheel has neither).
_PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
# ``--device`` for ONNX Runtime: the providers asked for, which must start (the CPU one stays as the fallback for nodes).
DEVICES = {
    "CPU": ["CPUExecutionProvider"],
    "CUDA": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "TENSORRT": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
# TensorRT's core library as ONNX Runtime's TensorRT provider loads it (TensorRT 10; 8 in JetPack 5).
_NVINFER = ("libnvinfer.so.10", "libnvinfer.so.8")


def nchwc_outdated(manifest: dict) -> bool:
    """A DyMN bundle's manifest without a model.nchwc.onnx record, or with a file of an older format
    than this dymn-edge writes: export can add or rewrite it (``add_nchwc_graph``)."""
    record = manifest.get("nchwc")
    return manifest.get("family") == "dymn" and (record is None or (record["included"] and record.get("format", 1) < NCHWC_FORMAT))


@functools.lru_cache(maxsize=1)
def tensorrt_loadable() -> bool:
    """Whether TensorRT's library loads here. onnxruntime-gpu lists its TensorRT provider either way;
    asked for without TensorRT, onnxruntime prints an error banner on stdout (seen on an H200 with
    onnxruntime-gpu 1.31.1), which would corrupt ``tag --json``, then falls back."""
    for name in _NVINFER:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def preferred_providers(available: list[str]) -> list[str]:
    """The providers to ask for, best first; CPU stays last as the fallback for unsupported nodes.
    TensorRT's provider counts only where TensorRT itself is installed."""
    return [p for p in _PREFERRED if p in available and (p != "TensorrtExecutionProvider" or tensorrt_loadable())]


def provider_options(provider: str) -> dict[str, str]:
    """What dymn-edge sets for each GPU provider.

    CUDA: no TF32. ONNX Runtime's CUDA provider allows it by default; on an H200 (onnxruntime-gpu
    1.31.1) that moved logits up to 0.16 from the CPU provider's (the seeded dymn04, `expanded`) and
    0.022 for mn04_as; without it the largest difference was 2.3e-4 (docs/benchmarks.md).
    TensorRT: engines are cached, else every process start rebuilds them (minutes on a Jetson).
    """
    if provider == "CUDAExecutionProvider":
        return {"use_tf32": "0"}
    if provider == "TensorrtExecutionProvider":
        from ..registry import cache_dir

        cache = cache_dir() / "onnxruntime-tensorrt"
        cache.mkdir(parents=True, exist_ok=True)  # made here rather than left to the provider
        cache = str(cache)
        return {"trt_engine_cache_enable": "True", "trt_engine_cache_path": cache, "trt_timing_cache_enable": "True"}
    return {}


def _smoke_input(shape: list[int | None]) -> np.ndarray:
    """Silence in the model's input shape, 64 frames where the length is free: enough for every stride."""
    batch, channels, mels, frames = (d if d is not None else default for d, default in zip(shape, (1, 1, 128, 64), strict=True))
    return np.zeros((batch, channels, mels, frames), dtype=np.float32)


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, model_path: str | Path, *, threads: int | None = None, providers: list[str] | None = None,
                 spin: bool = True) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendUnavailableError("onnxruntime is not installed: pip install onnxruntime") from e
        options = ort.SessionOptions()
        # The memory-pattern planner keeps one arena block sized for the largest run and grows it per
        # input shape; without it dymn10 peaks ~17 MB lower over repeated windows, at no measured
        # latency cost (dymn04/dymn10/mn04, 1 thread, 10 s window: within 2 %).
        options.enable_mem_pattern = False
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if not spin:
            # Idle pool threads otherwise busy-wait after every run, taking a core from the rest of a
            # streaming pipeline (file mode at 2 threads: 2.8 s -> see docs/streaming.md).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        available = ort.get_available_providers()
        requested = providers is not None
        if providers is None:
            providers = preferred_providers(available)
        missing = [p for p in providers if p not in available]
        if missing:
            raise BackendUnavailableError(f"onnxruntime has no {', '.join(missing)} here (available: {', '.join(available)})")
        self.session = _session(ort, model_path, options, providers)
        if self.session.get_providers()[0] != providers[0]:
            # onnxruntime falls back when a GPU provider's libraries do not load, saying so only in its log
            message = f"onnxruntime could not start {providers[0]} (running on {', '.join(self.session.get_providers())})"
            if requested:
                raise BackendUnavailableError(f"{message}; its libraries (CUDA, cuDNN, TensorRT) must be installed and on the library path")
            logger.warning("%s", message)
        inputs = self.session.get_inputs()
        self.input_name = inputs[0].name
        self.input_shape = [d if isinstance(d, int) else None for d in inputs[0].shape]
        self.max_batch = self.input_shape[0]
        self.output_name = self.session.get_outputs()[0].name
        self.output_shape = [d if isinstance(d, int) else None for d in self.session.get_outputs()[0].shape]
        self.model_path = Path(model_path)
        self.providers = self.session.get_providers()
        logger.info(
            "onnxruntime %s: input %s %s, providers %s, threads %s",
            ort.__version__, self.input_name, inputs[0].shape, self.providers, threads or "default",
        )

    def infer(self, features: np.ndarray) -> np.ndarray:
        features = np.ascontiguousarray(features, dtype=np.float32)
        try:
            return self.session.run([self.output_name], {self.input_name: features})[0]
        except Exception as e:  # onnxruntime's errors are untyped; they mean model and input disagree
            raise BundleError(f"{self.model_path}: onnxruntime rejected input of shape {features.shape}: {e}") from e


def _session(ort, model_path: str | Path, options, providers: list[str]):
    """The session, with each GPU provider's options; onnxruntime's own prints go to stderr, never stdout."""
    extras = {p: provider_options(p) for p in providers}  # once each: TensorRT's makes its cache folder
    configured = [(p, extras[p]) if extras[p] else p for p in providers]
    try:
        with contextlib.redirect_stdout(sys.stderr):
            try:
                return ort.InferenceSession(str(model_path), options, providers=configured)
            except Exception as e:
                if configured == providers or "option" not in str(e).lower():
                    raise
                # an older onnxruntime that does not know an option (use_tf32 is recent): its defaults, then
                logger.warning("onnxruntime %s refused dymn-edge's provider options (%s); using its defaults", ort.__version__, e)
                return ort.InferenceSession(str(model_path), options, providers=providers)
    except Exception as e:  # onnxruntime raises its own untyped errors for bad models
        raise BundleError(f"{model_path}: onnxruntime cannot load this model: {e}") from e


def open_onnxruntime(portable: str | Path, nchwc: str | Path | None = None, *, threads: int | None = None,
                     spin: bool = True, device: str | None = None) -> OnnxRuntimeBackend:
    """The bundle's model in ONNX Runtime: ``nchwc`` (model.nchwc.onnx) where it runs, else ``portable``.

    The blocked form is for the CPU provider alone (its operators exist nowhere else) and needs an
    ONNX Runtime build with NCHWc kernels (its x86 builds; verified with AVX-512, and with AVX2
    under emulation). It is run once on a short input before it is chosen: a session can load and
    still fail at its first run (files written before runtime/nchwc.py sliced off its padded
    channels did so on AVX2). Where it does not load or run, and with DYMN_EDGE_NCHWC=0, the
    portable model.onnx runs. Both compute the same logits (export checks each against PyTorch);
    ``backend.model_path`` says which one runs.

    ``device`` (CPU, CUDA or TensorRT; any case) asks for those providers and fails if they do not
    start; by default the best this onnxruntime build has is used (``preferred_providers``).
    """
    providers = None
    if device is not None:
        providers = DEVICES.get(device.upper())
        if providers is None:
            raise BackendUnavailableError(f"onnxruntime device {device!r}: expected one of CPU, CUDA, TensorRT")
    if nchwc is not None and os.environ.get(NCHWC_ENV, "1") != "0":
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendUnavailableError("onnxruntime is not installed: pip install onnxruntime") from e
        if (providers or preferred_providers(ort.get_available_providers())) == ["CPUExecutionProvider"]:
            try:
                blocked = OnnxRuntimeBackend(nchwc, threads=threads, spin=spin, providers=providers)
                blocked.infer(_smoke_input(blocked.input_shape))
                return blocked
            except BundleError as e:
                logger.info("running %s instead of %s: %s", Path(portable).name, Path(nchwc).name, e)
    return OnnxRuntimeBackend(portable, threads=threads, spin=spin, providers=providers)
