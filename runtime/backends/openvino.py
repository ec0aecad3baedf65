"""OpenVINO backend: reads the bundle's ONNX (or IR) directly; device name passed through (CPU, GPU, NPU)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailableError, BundleError

__all__ = ["OpenVinoBackend"]

logger = logging.getLogger(__name__)


class OpenVinoBackend:
    name = "openvino"

    def __init__(
        self, model_path: str | Path, *, threads: int | None = None, device: str = "CPU", precision: str | None = "f32"
    ) -> None:
        try:
            import openvino as ov
        except ImportError as e:
            raise BackendUnavailableError('OpenVINO is not installed: pip install "dymn-edge[openvino]"') from e
        core = ov.Core()
        if device.split(".")[0].split(":")[0] not in {d.split(".")[0] for d in core.available_devices} | {"AUTO", "MULTI", "HETERO"}:
            raise BackendUnavailableError(f"OpenVINO device {device!r} not available; this machine has {core.available_devices}")
        # OpenVINO's CPU plugin silently computes in bf16 on CPUs with native bf16 (e.g. Zen 4,
        # Sapphire Rapids); an FP32 bundle must stay FP32 or parity with PyTorch is lost (~3e-2).
        config: dict = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
        if threads and device == "CPU":
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            model = core.read_model(str(model_path))
            self.compiled = core.compile_model(model, device, config)
        except RuntimeError as e:
            raise BundleError(f"{model_path}: OpenVINO cannot load this model on {device}: {e}") from e
        shape = model.inputs[0].get_partial_shape()
        self.input_shape = [d.get_length() if d.is_static else None for d in shape]
        self.output_shape = [d.get_length() if d.is_static else None for d in model.outputs[0].get_partial_shape()]
        self.max_batch = self.input_shape[0]
        self.model_path = model_path
        self.request = self.compiled.create_infer_request()
        self.device = device
        logger.info(
            "openvino %s on %s: input %s, precision %s, threads %s", ov.__version__, device, shape, precision, threads or "default"
        )

    def infer(self, features: np.ndarray) -> np.ndarray:
        features = np.ascontiguousarray(features, dtype=np.float32)
        try:
            result = self.request.infer({0: features})
        except RuntimeError as e:
            raise BundleError(f"{self.model_path}: OpenVINO rejected input of shape {features.shape}: {e}") from e
        return np.asarray(result[self.compiled.outputs[0]])
