"""Stand-ins for ``tensorrt`` and cuda-python's ``cudart``, for machines without a GPU.

Each fake implements only the documented API surface of its TensorRT generation, so code that
calls the wrong generation's API fails here as it would on a device:

* **8.5 / 8.6**: ``create_network`` must get the ``EXPLICIT_BATCH`` flag (the ONNX parser refuses
  implicit-batch networks); engines expose bindings (``num_bindings``, ``get_binding_shape``,
  ``execute_async_v2``) and no named-tensor calls.
* **10.x**: named I/O tensors only (``num_io_tensors``, ``set_input_shape``,
  ``set_tensor_address``, ``execute_async_v3``); no ``max_workspace_size``, no bindings.
* **11.x**: as 10.x, without ``BuilderFlag.FP16``/``INT8`` and without INT8 calibrators.

The parser reads the real ONNX file; an "engine" is that model serialized with the version and
GPU that built it, and executing it runs the model on ONNX Runtime CPU, reading and writing the
fake device memory that ``cudaMemcpyAsync`` fills, so the backend's buffer handling is exercised
for real. A deserialized engine from another version is refused (None), as TensorRT does.
"""

from __future__ import annotations

import ctypes
import enum
import json
import types
from dataclasses import dataclass, field

import numpy as np

MAGIC = b"FAKETRT1"


@dataclass
class FakeGpu:
    """The device: its identity and its memory (pointer -> bytearray)."""

    name: str = "Orin"
    major: int = 8
    minor: int = 7
    memory: dict = field(default_factory=dict)
    next_ptr: int = 0x1000
    streams: int = 0
    synchronized: int = 0

    def alloc(self, n: int) -> int:
        ptr = self.next_ptr
        self.memory[ptr] = bytearray(n)
        self.next_ptr += n + 0x100
        return ptr


# ------------------------------------------------------------------------------------------ cudart


def fake_cudart(gpu: FakeGpu) -> types.ModuleType:
    rt = types.ModuleType("cuda.bindings.runtime")

    class cudaError_t(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorInvalidValue = 1

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    ok = cudaError_t.cudaSuccess
    rt.cudaError_t, rt.cudaMemcpyKind = cudaError_t, cudaMemcpyKind
    rt.cudaGetDeviceCount = lambda: (ok, 1)
    rt.cudaDriverGetVersion = lambda: (ok, 11040)
    rt.cudaGetDeviceProperties = lambda i: (ok, types.SimpleNamespace(
        name=gpu.name.encode() + b"\0" * 8, major=gpu.major, minor=gpu.minor, totalGlobalMem=8 << 30))
    rt.cudaGetErrorName = lambda err: (ok, cudaError_t(err).name.encode())

    def cudaMalloc(n):
        return ok, gpu.alloc(n)

    def cudaFree(ptr):
        gpu.memory.pop(ptr, None)
        return (ok,)

    def cudaStreamCreate():
        gpu.streams += 1
        return ok, gpu.streams

    def cudaStreamSynchronize(stream):
        gpu.synchronized += 1
        return (ok,)

    def cudaMemcpyAsync(dst, src, n, kind, stream):
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
            if dst not in gpu.memory or len(gpu.memory[dst]) < n:
                return (cudaError_t.cudaErrorInvalidValue,)
            gpu.memory[dst][:n] = ctypes.string_at(src, n)
        else:
            if src not in gpu.memory or len(gpu.memory[src]) < n:
                return (cudaError_t.cudaErrorInvalidValue,)
            ctypes.memmove(dst, bytes(gpu.memory[src][:n]), n)
        return (ok,)

    rt.cudaMalloc, rt.cudaFree, rt.cudaMemcpyAsync = cudaMalloc, cudaFree, cudaMemcpyAsync
    rt.cudaStreamCreate, rt.cudaStreamSynchronize = cudaStreamCreate, cudaStreamSynchronize
    rt.cudaStreamDestroy = lambda s: (ok,)
    return rt


# ---------------------------------------------------------------------------------------- tensorrt


class _Enum(enum.IntEnum):
    pass


def fake_tensorrt(version: str, gpu: FakeGpu, built: list | None = None) -> types.ModuleType:
    """A ``tensorrt`` module of ``version``; ``built`` collects (network, config) of each build for inspection."""
    import onnx
    import onnxruntime as ort

    major = int(version.split(".")[0])
    named_api = major >= 10
    weak_typing = major < 11
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    built = built if built is not None else []

    class Logger:
        WARNING, ERROR, INFO = 2, 1, 3

        def __init__(self, severity=2):
            self.severity = severity

    class NetworkDefinitionCreationFlag(_Enum):
        EXPLICIT_BATCH = 0

    class MemoryPoolType(_Enum):
        WORKSPACE = 0

    flags = ["TF32", "REFIT"] + (["FP16", "INT8"] if weak_typing else [])
    BuilderFlag = _Enum("BuilderFlag", {f: i for i, f in enumerate(flags)})

    class DataType(_Enum):
        FLOAT = 0
        HALF = 1
        INT8 = 2
        INT32 = 3

    class TensorIOMode(_Enum):
        NONE = 0
        INPUT = 1
        OUTPUT = 2

    def nptype(dt):
        return {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8, DataType.INT32: np.int32}[dt]

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, tuple(shape)

    class Network:
        def __init__(self, explicit_batch):
            self.explicit_batch = explicit_batch
            self.model = None

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

        def parse_from_file(self, path):
            if not self.network.explicit_batch:
                self.errors.append("ONNX parser only supports networks with an explicit batch dimension")
                return False
            try:
                model = onnx.load(path)
            except Exception as e:
                self.errors.append(f"failed to parse ONNX model from file {path}: {e}")
                return False
            init = {t.name for t in model.graph.initializer}
            dims = lambda vi: [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]  # noqa: E731
            self.network.inputs = [Tensor(i.name, dims(i)) for i in model.graph.input if i.name not in init]
            self.network.outputs = [Tensor(o.name, dims(o)) for o in model.graph.output]
            self.network.model = model
            return True

    class OptimizationProfile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, min, opt, max):
            self.shapes[name] = (list(min), list(opt), list(max))

    class TimingCache:
        def __init__(self, data):
            self.data = bytes(data) or b"{}"

        def serialize(self):
            entries = json.loads(self.data)
            entries[version] = entries.get(version, 0) + 1
            return json.dumps(entries).encode()

    class BuilderConfig:
        def __init__(self):
            self.flags, self.pools, self.profiles = set(), {}, []
            self.timing_cache = None
            if weak_typing:
                self.int8_calibrator = None
                self.calibration_profile = None

        def set_flag(self, flag):
            self.flags.add(BuilderFlag(flag).name)

        def set_memory_pool_limit(self, pool, size):
            self.pools[MemoryPoolType(pool).name] = size

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, data):
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.timing_cache = cache
            return True

        def get_timing_cache(self):
            return self.timing_cache

    if weak_typing:
        BuilderConfig.set_calibration_profile = lambda self, profile: setattr(self, "calibration_profile", profile)

    class Builder:
        platform_has_fast_fp16 = True
        platform_has_fast_int8 = True

        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags=0):
            explicit = named_api or bool(flags & (1 << int(NetworkDefinitionCreationFlag.EXPLICIT_BATCH)))
            return Network(explicit)

        def create_builder_config(self):
            return BuilderConfig()

        def create_optimization_profile(self):
            return OptimizationProfile()

        def build_serialized_network(self, network, config):
            built.append((network, config))
            shapes = config.profiles[0].shapes if config.profiles else {}
            for t in network.inputs:
                if any(d < 0 for d in t.shape) and t.name not in shapes:
                    return None  # TensorRT: a dynamic input needs a profile
            has_qdq = any(n.op_type == "QuantizeLinear" for n in network.model.graph.node)
            if weak_typing and has_qdq and "INT8" not in config.flags:
                return None  # TensorRT 8.x/10.x refuse a Q/DQ network without the INT8 flag
            calibration = None
            if weak_typing and config.int8_calibrator is not None:
                cache = config.int8_calibrator.read_calibration_cache()
                if cache is None and config.int8_calibrator.get_batch([t.name for t in network.inputs]) is None:
                    return None  # nothing to calibrate with
                calibration = bytes(cache).decode().splitlines()[0]
            header = {"version": version, "device": gpu.name, "sm": f"{gpu.major}.{gpu.minor}", "flags": sorted(config.flags),
                      "calibration": calibration, "profile": shapes,
                      "inputs": [[t.name, list(t.shape)] for t in network.inputs],
                      "outputs": [[t.name, list(t.shape)] for t in network.outputs]}
            head = json.dumps(header).encode()
            return MAGIC + len(head).to_bytes(4, "little") + head + network.model.SerializeToString()

    class Engine:
        def __init__(self, header, model_bytes):
            self.header = header
            self.session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
            self.io = [(n, True, s) for n, s in header["inputs"]] + [(n, False, s) for n, s in header["outputs"]]

        def create_execution_context(self):
            return Context(self)

    class Context:
        def __init__(self, engine):
            self.engine, self.shapes, self.addresses = engine, {}, {}

        def _set_input_shape(self, name, shape):
            lo, _, hi = self.engine.header["profile"].get(name, [None, None, None])
            if lo is not None and not all(a <= d <= b for d, a, b in zip(shape, lo, hi)):
                return False
            self.shapes[name] = list(shape)
            return True

        def _shape(self, name):
            if name in self.shapes:
                return self.shapes[name]
            static = dict((n, s) for n, _, s in self.engine.io)[name]
            batch = next(iter(self.shapes.values()))[0] if self.shapes else -1
            return [batch if d < 0 else d for d in static]

        def _execute(self, addresses, stream):
            feeds = {}
            for name, is_input, _ in self.engine.io:
                if not is_input:
                    continue
                shape = self.shapes[name]
                n = int(np.prod(shape)) * 4
                feeds[name] = np.frombuffer(bytes(gpu.memory[addresses[name]][:n]), dtype=np.float32).reshape(shape)
            names = [n for n, is_input, _ in self.engine.io if not is_input]
            for name, value in zip(names, self.engine.session.run(names, feeds)):
                data = np.ascontiguousarray(value, dtype=np.float32).tobytes()
                gpu.memory[addresses[name]][: len(data)] = data
            return True

    if named_api:
        Engine.num_io_tensors = property(lambda self: len(self.io))
        Engine.get_tensor_name = lambda self, i: self.io[i][0]
        Engine.get_tensor_mode = lambda self, name: TensorIOMode.INPUT if dict((n, i) for n, i, _ in self.io)[name] else TensorIOMode.OUTPUT
        Engine.get_tensor_shape = lambda self, name: dict((n, s) for n, _, s in self.io)[name]
        Engine.get_tensor_dtype = lambda self, name: DataType.FLOAT
        Engine.get_tensor_profile_shape = lambda self, name, profile: self.header["profile"][name]
        Context.set_input_shape = Context._set_input_shape
        Context.get_tensor_shape = Context._shape

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr
            return True

        Context.set_tensor_address = set_tensor_address
        Context.execute_async_v3 = lambda self, stream_handle: self._execute(self.addresses, stream_handle)
    else:
        Engine.num_bindings = property(lambda self: len(self.io))
        Engine.get_binding_name = lambda self, i: self.io[i][0]
        Engine.binding_is_input = lambda self, i: self.io[i][1]
        Engine.get_binding_shape = lambda self, i: self.io[i][2]
        Engine.get_binding_dtype = lambda self, i: DataType.FLOAT
        Engine.get_profile_shape = lambda self, profile, i: self.header["profile"][self.io[i][0]]
        Context.set_binding_shape = lambda self, i, shape: self._set_input_shape(self.engine.io[i][0], shape)
        Context.get_binding_shape = lambda self, i: self._shape(self.engine.io[i][0])

        def execute_async_v2(self, bindings, stream_handle):
            return self._execute({name: bindings[i] for i, (name, _, _) in enumerate(self.engine.io)}, stream_handle)

        Context.execute_async_v2 = execute_async_v2

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            data = bytes(data)
            if not data.startswith(MAGIC):
                return None
            n = int.from_bytes(data[8:12], "little")
            header = json.loads(data[12:12 + n])
            if header["version"] != version:
                return None  # TensorRT: "The engine plan file is not compatible with this version of TensorRT"
            return Engine(header, data[12 + n:])

    class IInt8Calibrator:
        def __init__(self):
            pass

    for name, value in dict(Logger=Logger, NetworkDefinitionCreationFlag=NetworkDefinitionCreationFlag, MemoryPoolType=MemoryPoolType,
                            BuilderFlag=BuilderFlag, DataType=DataType, OnnxParser=OnnxParser, Builder=Builder, Runtime=Runtime,
                            nptype=nptype).items():
        setattr(trt, name, value)
    if named_api:
        trt.TensorIOMode = TensorIOMode
    if weak_typing:
        trt.IInt8EntropyCalibrator2 = type("IInt8EntropyCalibrator2", (IInt8Calibrator,), {})
        trt.IInt8MinMaxCalibrator = type("IInt8MinMaxCalibrator", (IInt8Calibrator,), {})
    return trt


def install(monkeypatch, version: str, gpu: FakeGpu | None = None, built: list | None = None) -> FakeGpu:
    """Make ``import tensorrt`` and cuda-python's runtime API the fakes for one test."""
    gpu = gpu or FakeGpu()
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", fake_tensorrt(version, gpu, built))
    monkeypatch.setitem(__import__("sys").modules, "cuda.bindings.runtime", fake_cudart(gpu))
    return gpu
