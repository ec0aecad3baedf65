"""OpenVINO backend: reads the bundle's ONNX (or IR) directly; device name passed through (CPU, GPU, NPU)."""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailableError, BundleError

__all__ = ["OpenVinoBackend"]

logger = logging.getLogger(__name__)


class OpenVinoBackend:
    """OpenVINO inference; full windows run on a model compiled for their exact shape.

    OpenVINO's CPU plugin runs a statically shaped model much faster than one with a dynamic frame
    axis (dymn04 `grouped`, 10 s window, 1 thread: 12.8 -> 8.9 ms; dymn10 `matmul` 37.6 -> 29.8
    ms), and NPUs need static shapes. Inputs with ``static_frames`` frames (the bundle's window)
    get a model compiled for their shape on first use, the last few kept. Other lengths (the short
    windows at the start of a stream, the end of a file) share one dynamic compilation, so they
    never trigger a compile each.
    """

    name = "openvino"
    max_shapes = 4

    def __init__(
        self, model_path: str | Path, *, threads: int | None = None, device: str = "CPU", precision: str | None = "f32",
        static_frames: int | None = None,
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
        self.model_path, self.device = model_path, device
        self._core, self._config = core, config
        try:
            self.model = core.read_model(str(model_path))
        except RuntimeError as e:
            raise BundleError(f"{model_path}: OpenVINO cannot load this model on {device}: {e}") from e
        shape = self.model.inputs[0].get_partial_shape()
        self.input_shape = [d.get_length() if d.is_static else None for d in shape]
        self.output_shape = [d.get_length() if d.is_static else None for d in self.model.outputs[0].get_partial_shape()]
        self.max_batch = self.input_shape[0]
        self.static_frames = None if shape.is_static else static_frames  # a static model is compiled once, as written
        # The model as written (dynamic axes and all), compiled on first use unless already static.
        self._as_written = self._compile(self.model, self.input_shape) if shape.is_static else None
        self._static: OrderedDict[tuple[int, ...], object] = OrderedDict()
        logger.info(
            "openvino %s on %s: input %s, precision %s, threads %s, static for %s frames",
            ov.__version__, device, shape, precision, threads or "default", self.static_frames,
        )

    def _compile(self, model, shape):
        try:
            return self._core.compile_model(model, self.device, self._config).create_infer_request()
        except RuntimeError as e:
            raise BundleError(f"{self.model_path}: OpenVINO cannot compile this model for input {shape} on {self.device}: {e}") from e

    def _request(self, shape: tuple[int, ...]):
        """The infer request for ``shape``: its own static compilation for full windows, else the dynamic one."""
        if shape in self._static:
            self._static.move_to_end(shape)
            return self._static[shape]
        if shape[-1] != self.static_frames:
            if self._as_written is None:
                self._as_written = self._compile(self.model, self.input_shape)
            return self._as_written
        model = self.model.clone()
        model.reshape({model.inputs[0]: list(shape)})
        self._static[shape] = self._compile(model, list(shape))
        if len(self._static) > self.max_shapes:
            self._static.popitem(last=False)
        return self._static[shape]

    def infer(self, features: np.ndarray) -> np.ndarray:
        features = np.ascontiguousarray(features, dtype=np.float32)
        try:
            return np.asarray(self._request(features.shape).infer({0: features})[0])
        except RuntimeError as e:
            raise BundleError(f"{self.model_path}: OpenVINO rejected input of shape {features.shape}: {e}") from e
