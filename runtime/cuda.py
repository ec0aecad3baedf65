"""The CUDA device through cuda-python's runtime API: what GPU this is, device memory, streams.

TensorRT's own Python samples drive CUDA with cuda-python (``cudart``); the TensorRT backend does
the same, so no pycuda and no torch is needed on the device. Every call returns an error code
first; ``_check`` turns a failure into an exception that names the call and what to do. A machine
without the NVIDIA driver answers ``cudaErrorInsufficientDriver`` (seen here with cuda-python 13.4
and no driver), one without a GPU ``cudaErrorNoDevice``: both become ``BackendUnavailableError``.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .errors import BackendUnavailableError, DymnEdgeError

__all__ = ["CudaDevice", "CudaError", "DeviceBuffer", "Stream", "cuda_device", "cudart"]

_INSTALL = 'pip install "dymn-edge[tensorrt]" (cuda-python)'
# Error names that mean "there is no usable GPU here", as opposed to a failing call on a working GPU.
_NO_DEVICE = ("cudaErrorInsufficientDriver", "cudaErrorNoDevice", "cudaErrorInitializationError",
              "cudaErrorCompatNotSupportedOnDevice", "cudaErrorSystemDriverMismatch")


class CudaError(DymnEdgeError, RuntimeError):
    """A CUDA call failed on a machine that has a GPU."""


def cudart():
    """cuda-python's runtime API module (``cuda.bindings.runtime`` since 12.6, ``cuda.cudart`` before)."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise BackendUnavailableError(f"cuda-python is not installed: {_INSTALL}")


def _error_name(rt, err) -> str:
    name = getattr(err, "name", None)
    if name:
        return name
    try:
        return rt.cudaGetErrorName(err)[1].decode()
    except Exception:  # an error code this cuda-python cannot name is still worth reporting
        return str(err)


def _check(rt, result: tuple, call: str) -> Any:
    """The value(s) of a cudart call; raises on a non-success error code."""
    err, *values = result
    if err != rt.cudaError_t.cudaSuccess:
        name = _error_name(rt, err)
        if name in _NO_DEVICE:
            raise BackendUnavailableError(
                f"no usable CUDA device: {call} returned {name}. Install the NVIDIA driver (on a Jetson it comes with "
                "JetPack), check that the GPU is visible (nvidia-smi; on a Jetson: tegrastats), or use --backend onnxruntime")
        raise CudaError(f"{call} failed: {name}")
    return values[0] if len(values) == 1 else tuple(values)


@dataclass(frozen=True)
class CudaDevice:
    """What a TensorRT engine is tied to: the GPU model and its compute capability (e.g. Orin: 8.7)."""

    index: int
    name: str
    compute_capability: str
    total_memory_bytes: int
    driver_version: int  # CUDA's encoding, 1000 * major + 10 * minor (12060 = 12.6)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def cuda_device(index: int = 0) -> CudaDevice:
    """The CUDA device ``index``; ``BackendUnavailableError`` when there is no driver or no GPU."""
    rt = cudart()
    count = _check(rt, rt.cudaGetDeviceCount(), "cudaGetDeviceCount")
    if index >= count:
        raise BackendUnavailableError(f"CUDA device {index} requested; this machine has {count} device(s)")
    props = _check(rt, rt.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    driver = _check(rt, rt.cudaDriverGetVersion(), "cudaDriverGetVersion")
    name = props.name.split(b"\0", 1)[0].decode() if isinstance(props.name, bytes) else str(props.name)
    return CudaDevice(index, name, f"{props.major}.{props.minor}", int(props.totalGlobalMem), int(driver))


class Stream:
    """A CUDA stream: copies and the engine run are queued on it, and ``synchronize`` waits once per inference."""

    def __init__(self) -> None:
        self._rt = cudart()
        self.handle = _check(self._rt, self._rt.cudaStreamCreate(), "cudaStreamCreate")

    def __int__(self) -> int:
        return int(self.handle)

    def synchronize(self) -> None:
        _check(self._rt, self._rt.cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def close(self) -> None:
        if self.handle is not None:
            self._rt.cudaStreamDestroy(self.handle)
            self.handle = None


class DeviceBuffer:
    """Device memory of ``nbytes``; grows (never shrinks) when a larger tensor comes along."""

    def __init__(self, nbytes: int = 0) -> None:
        self._rt = cudart()
        self.ptr = 0
        self.nbytes = 0
        self.reserve(nbytes)

    def reserve(self, nbytes: int) -> None:
        if nbytes <= self.nbytes:
            return
        self.free()
        self.ptr = int(_check(self._rt, self._rt.cudaMalloc(nbytes), f"cudaMalloc({nbytes})"))
        self.nbytes = nbytes

    def upload(self, host: np.ndarray, stream: Stream) -> None:
        """Queue a copy of the C-contiguous ``host`` array into this buffer."""
        self.reserve(host.nbytes)
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        _check(self._rt, self._rt.cudaMemcpyAsync(self.ptr, host.ctypes.data, host.nbytes, kind, stream.handle), "cudaMemcpyAsync (to device)")

    def download(self, host: np.ndarray, stream: Stream) -> None:
        """Queue a copy of this buffer into the C-contiguous ``host`` array (valid after ``stream.synchronize``)."""
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(self._rt, self._rt.cudaMemcpyAsync(host.ctypes.data, self.ptr, host.nbytes, kind, stream.handle), "cudaMemcpyAsync (to host)")

    def free(self) -> None:
        if self.ptr:
            self._rt.cudaFree(self.ptr)
        self.ptr, self.nbytes = 0, 0
