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
    """OpenVINO inference, compiled once per input shape.

    A model with a dynamic frame (or batch) axis is compiled for each concrete shape it is given,
    and the last few compilations are kept: OpenVINO's CPU plugin runs a statically shaped model
    much faster (dymn04 `grouped`, 10 s window, 1 thread: 12.8 -> 8.9 ms; dymn10 `matmul` 37.6 ->
    29.8 ms), and NPUs need static shapes. A stream or a file is cut into equal windows, so it
    compiles once.
    """

    name = "openvino"
    max_shapes = 4

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
        self._requests: OrderedDict[tuple[int, ...], object] = OrderedDict()
        if shape.is_static:
            self._request(tuple(self.input_shape))
        logger.info(
            "openvino %s on %s: input %s, precision %s, threads %s", ov.__version__, device, shape, precision, threads or "default"
        )

    def _request(self, shape: tuple[int, ...]):
        """The infer request compiled for ``shape`` (compiled on first use, least recently used dropped)."""
        if shape in self._requests:
            self._requests.move_to_end(shape)
            return self._requests[shape]
        model = self.model
        if not model.inputs[0].get_partial_shape().is_static:
            model = model.clone()
            model.reshape({model.inputs[0]: list(shape)})
        try:
            request = self._core.compile_model(model, self.device, self._config).create_infer_request()
        except RuntimeError as e:
            raise BundleError(f"{self.model_path}: OpenVINO cannot compile this model for input {list(shape)} on {self.device}: {e}") from e
        self._requests[shape] = request
        if len(self._requests) > self.max_shapes:
            self._requests.popitem(last=False)
        return request

    def infer(self, features: np.ndarray) -> np.ndarray:
        features = np.ascontiguousarray(features, dtype=np.float32)
        try:
            request = self._request(features.shape)
            return np.asarray(request.infer({0: features})[0])
        except RuntimeError as e:
            raise BundleError(f"{self.model_path}: OpenVINO rejected input of shape {features.shape}: {e}") from e
