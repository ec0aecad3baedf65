"""TensorRT backend: runs the serialized engine a bundle carries, with device buffers on a CUDA stream.

A TensorRT engine is only valid for the TensorRT version and the GPU model it was built with
(TensorRT's documentation: serialized engines are not portable across versions or devices). The
bundle's manifest records both (``export/tensorrt.py``), and this backend refuses a mismatch before
TensorRT sees the bytes, with the command that rebuilds the engine on the device.

Two API generations are dispatched on the installed version:

* **8.5 / 8.6** (JetPack 5): bindings, addressed by index; ``execute_async_v2(bindings, stream)``.
* **10.x and 11.x** (JetPack 6, current PyPI): named I/O tensors; ``set_input_shape``,
  ``set_tensor_address`` and ``execute_async_v3(stream)``. 10.0 removed the bindings API.

CUDA comes from cuda-python (``runtime/cuda.py``): one stream per backend, inputs copied up,
the engine enqueued and outputs copied back on it, one synchronisation per inference.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..cuda import CudaDevice, DeviceBuffer, Stream, cuda_device
from ..errors import BackendUnavailableError, BundleError

__all__ = ["SUPPORTED", "TensorRTBackend", "api_generation", "engine_mismatches", "import_tensorrt", "rebuild_hint"]

logger = logging.getLogger(__name__)

SUPPORTED = "8.5, 8.6, 10.x and 11.x"
_INSTALL = ('TensorRT is not installed: on a Jetson it comes with JetPack (python3-libnvinfer); '
            'elsewhere pip install "dymn-edge[tensorrt]"')


def import_tensorrt():
    """The ``tensorrt`` module, or ``BackendUnavailableError`` saying where to get it."""
    try:
        return importlib.import_module("tensorrt")
    except ImportError as e:  # also the bindings without their libraries (libnvinfer*.so missing)
        raise BackendUnavailableError(f"{_INSTALL} ({e})") from e


def api_generation(version: str) -> int:
    """8 (bindings API) for 8.5/8.6, 10 for 10.x, 11 for 11.x (named I/O tensors); refuses the rest."""
    try:
        major, minor = (int(p) for p in version.split(".")[:2])
    except ValueError:
        raise BackendUnavailableError(f"TensorRT version {version!r} is not MAJOR.MINOR[...]") from None
    if (major, minor) < (8, 5) or major == 9 or major > 11:
        raise BackendUnavailableError(f"TensorRT {version} is not supported; dymn-edge supports TensorRT {SUPPORTED}")
    return 8 if major == 8 else major


def rebuild_hint(bundle_path: str | Path) -> str:
    return (f"TensorRT engines only run with the TensorRT version and on the GPU model they were built for: rebuild it on "
            f"this device with `dymn-edge export tensorrt {bundle_path} --out NEW_BUNDLE` (the bundle keeps its ONNX model)")


def engine_mismatches(record: dict[str, Any], tensorrt_version: str, device: CudaDevice) -> list[str]:
    """How the engine's build (manifest ``tensorrt``) differs from this machine; empty when it may run here."""
    problems = []
    built_version = record.get("version")
    if built_version != tensorrt_version:
        problems.append(f"built with TensorRT {built_version}, this machine has TensorRT {tensorrt_version}")
    built = record.get("device") or {}
    here = (device.name, device.compute_capability)
    if (built.get("name"), built.get("compute_capability")) != here:
        problems.append(f"built for {built.get('name')} (compute capability {built.get('compute_capability')}), "
                        f"this machine has {device.name} (compute capability {device.compute_capability})")
    return problems


class _BindingsIO:
    """TensorRT 8.5/8.6: I/O tensors are bindings, addressed by index."""

    def __init__(self, trt, engine, context) -> None:
        self.engine, self.context = engine, context
        self.index = {engine.get_binding_name(i): i for i in range(engine.num_bindings)}
        self.tensors = [(name, engine.binding_is_input(i), list(engine.get_binding_shape(i)), np.dtype(trt.nptype(engine.get_binding_dtype(i))))
                        for name, i in self.index.items()]

    def profile(self, name: str) -> list[list[int]]:
        return [list(s) for s in self.engine.get_profile_shape(0, self.index[name])]

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        return bool(self.context.set_binding_shape(self.index[name], shape))

    def shape(self, name: str) -> list[int]:
        return list(self.context.get_binding_shape(self.index[name]))

    def execute(self, addresses: dict[str, int], stream: int) -> bool:
        bindings = [0] * len(self.index)
        for name, ptr in addresses.items():
            bindings[self.index[name]] = ptr
        return bool(self.context.execute_async_v2(bindings=bindings, stream_handle=stream))


class _NamedTensorsIO:
    """TensorRT 10.x/11.x: I/O tensors are addressed by name."""

    def __init__(self, trt, engine, context) -> None:
        self.engine, self.context = engine, context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.tensors = [(n, engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT, list(engine.get_tensor_shape(n)),
                         np.dtype(trt.nptype(engine.get_tensor_dtype(n)))) for n in names]

    def profile(self, name: str) -> list[list[int]]:
        return [list(s) for s in self.engine.get_tensor_profile_shape(name, 0)]

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        return bool(self.context.set_input_shape(name, shape))

    def shape(self, name: str) -> list[int]:
        return list(self.context.get_tensor_shape(name))

    def execute(self, addresses: dict[str, int], stream: int) -> bool:
        for name, ptr in addresses.items():
            if not self.context.set_tensor_address(name, ptr):
                return False
        return bool(self.context.execute_async_v3(stream_handle=stream))


class TensorRTBackend:
    """Runs a bundle's TensorRT engine; ``infer`` takes (batch, 1, n_mels, frames) float32, returns logits."""

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, record: dict[str, Any] | None, *, bundle_path: str | Path | None = None) -> None:
        self.engine_path = Path(engine_path)
        where = bundle_path or self.engine_path.parent
        trt = import_tensorrt()
        self.generation = api_generation(trt.__version__)
        if not record:
            raise BundleError(f"{where}: the manifest does not record which TensorRT version and GPU built the engine; {rebuild_hint(where)}")
        self.device = cuda_device(0)
        problems = engine_mismatches(record, trt.__version__, self.device)
        if problems:
            raise BundleError(f"{where}: engine {'; '.join(problems)}. {rebuild_hint(where)}")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise BundleError(f"{self.engine_path}: TensorRT {trt.__version__} could not deserialize the engine (see its log above); {rebuild_hint(where)}")
        self.context = self.engine.create_execution_context()
        io_class = _BindingsIO if self.generation == 8 else _NamedTensorsIO
        self.io = io_class(trt, self.engine, self.context)
        inputs = [t for t in self.io.tensors if t[1]]
        outputs = [t for t in self.io.tensors if not t[1]]
        if len(inputs) != 1 or not outputs:
            raise BundleError(f"{self.engine_path}: expected one input and at least one output, engine has {len(inputs)} and {len(outputs)}")
        self.input_name, _, shape, self.input_dtype = inputs[0]
        self.input_shape = [d if d >= 0 else None for d in shape]
        self.output_names = [t[0] for t in outputs]
        self.logits_name = "logits" if "logits" in self.output_names else self.output_names[0]
        self.output_dtypes = {t[0]: t[3] for t in outputs}
        logits_shape = next(t[2] for t in outputs if t[0] == self.logits_name)
        self.output_shape = [d if d >= 0 else None for d in logits_shape]
        self.min_shape, _, self.max_shape = self.io.profile(self.input_name)
        self.max_batch = self.min_shape[0] if self.min_shape[0] == self.max_shape[0] else None
        self.stream = Stream()
        self.buffers = {name: DeviceBuffer() for name, *_ in self.io.tensors}
        logger.info("tensorrt %s (API %d) on %s (sm %s): input %s %s profile %s..%s, outputs %s, precision %s",
                    trt.__version__, self.generation, self.device.name, self.device.compute_capability, self.input_name,
                    shape, self.min_shape, self.max_shape, self.output_names, record.get("precision"))

    def infer(self, features: np.ndarray) -> np.ndarray:
        features = np.ascontiguousarray(features, dtype=self.input_dtype)
        shape = tuple(int(d) for d in features.shape)
        if len(shape) != len(self.min_shape) or any(not lo <= d <= hi for d, lo, hi in zip(shape, self.min_shape, self.max_shape)):
            raise BundleError(f"{self.engine_path}: input of shape {shape} is outside the engine's optimization profile "
                              f"{tuple(self.min_shape)}..{tuple(self.max_shape)}; rebuild with a wider --batch MIN:OPT:MAX")
        if not self.io.set_input_shape(self.input_name, shape):
            raise BundleError(f"{self.engine_path}: TensorRT refused input shape {shape}")
        self.buffers[self.input_name].upload(features, self.stream)
        hosts = {}
        for name in self.output_names:
            hosts[name] = np.empty(self.io.shape(name), dtype=self.output_dtypes[name])
            self.buffers[name].reserve(max(hosts[name].nbytes, 1))
        if not self.io.execute({name: buf.ptr for name, buf in self.buffers.items()}, int(self.stream)):
            raise BundleError(f"{self.engine_path}: TensorRT failed to enqueue the engine for input {shape} (see its log above)")
        for name, host in hosts.items():
            self.buffers[name].download(host, self.stream)
        self.stream.synchronize()
        return hosts[self.logits_name].astype(np.float32, copy=False)

    def close(self) -> None:
        for buf in self.buffers.values():
            buf.free()
        self.stream.close()
