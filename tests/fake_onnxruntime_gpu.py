"""onnxruntime-gpu as a stand-in, for tests of what the runtime asks of a GPU machine's ONNX Runtime
(no GPU here): the providers it lists, which ones start, and the banner it prints when one does not."""

from __future__ import annotations

import sys

import onnxruntime

from dymn_edge.runtime.registry import embedded_bundle_path

__all__ = ["CPU", "CUDA", "GPU_WHEEL", "MODEL", "TRT", "install_gpu_wheel"]

TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
GPU_WHEEL = [TRT, CUDA, CPU]  # onnxruntime-gpu's list, whether or not CUDA and TensorRT are installed
MODEL = embedded_bundle_path("mn04_as") / "model.onnx"


class _Session:
    """A real CPU session that reports the providers a GPU machine would have started."""

    def __init__(self, session, providers):
        self._session, self._providers = session, providers

    def get_providers(self):
        return self._providers

    def __getattr__(self, name):
        return getattr(self._session, name)


class _GpuWheel:
    """onnxruntime-gpu as a stand-in: records what was asked; the GPU providers in ``starts`` come up,
    any other falls back to the CPU after the banner onnxruntime prints on stdout."""

    def __init__(self, starts=(), known_options=True):
        self.SessionOptions, self.__version__ = onnxruntime.SessionOptions, onnxruntime.__version__
        self.starts, self.known_options, self.asked = set(starts), known_options, []

    def get_available_providers(self):
        return list(GPU_WHEEL)

    def InferenceSession(self, path, options, providers):
        self.asked.append(providers)
        if not self.known_options and any(isinstance(p, tuple) for p in providers):
            raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Unknown provider option: use_tf32")
        session = onnxruntime.InferenceSession(path, options, providers=[CPU])
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        if names[0] in self.starts:
            return _Session(session, [n for n in names if n in self.starts or n == CPU])
        print("*************** EP Error ***************")
        return _Session(session, [CPU])


def install_gpu_wheel(monkeypatch, **kwargs) -> _GpuWheel:
    """Put the stand-in where ``import onnxruntime`` finds it, for this test."""
    fake = _GpuWheel(**kwargs)
    monkeypatch.setitem(sys.modules, "onnxruntime", fake)
    return fake
