"""Which ONNX Runtime execution providers the runtime asks for, with which options, and what happens
when onnxruntime-gpu lists a provider whose libraries do not load (as on the lent H200 for TensorRT)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from dymn_edge.runtime.backends import onnxruntime as ort_backend
from dymn_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend, preferred_providers, provider_options
from dymn_edge.runtime.errors import BackendUnavailableError
from dymn_edge.runtime.registry import embedded_bundle_path
from fake_onnxruntime_gpu import CPU, CUDA, GPU_WHEEL, MODEL, TRT, install_gpu_wheel


@pytest.fixture
def gpu_wheel(monkeypatch, tmp_path):
    monkeypatch.setenv("DYMN_EDGE_CACHE", str(tmp_path / "cache"))
    return lambda **kwargs: install_gpu_wheel(monkeypatch, **kwargs)


def test_tensorrt_is_asked_for_only_where_its_library_loads(monkeypatch):
    monkeypatch.setattr(ort_backend, "tensorrt_loadable", lambda: True)
    assert preferred_providers(["AzureExecutionProvider", CPU, CUDA, TRT]) == [TRT, CUDA, CPU]
    monkeypatch.setattr(ort_backend, "tensorrt_loadable", lambda: False)
    assert preferred_providers(GPU_WHEEL) == [CUDA, CPU]
    assert preferred_providers([CUDA, CPU]) == [CUDA, CPU]
    assert preferred_providers(["AzureExecutionProvider", CPU]) == [CPU]


def test_tensorrt_loadable_tries_the_real_library_names(monkeypatch):
    for names, expected in ((("libnvinfer-not-here.so.10",), False), (("libnvinfer-not-here.so.10", "libc.so.6"), True)):
        monkeypatch.setattr(ort_backend, "_NVINFER", names)
        ort_backend.tensorrt_loadable.cache_clear()
        assert ort_backend.tensorrt_loadable() is expected
    ort_backend.tensorrt_loadable.cache_clear()


def test_gpu_providers_get_fp32_cuda_and_a_tensorrt_engine_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DYMN_EDGE_CACHE", str(tmp_path))
    assert provider_options(CUDA) == {"use_tf32": "0"}
    trt = provider_options(TRT)
    assert trt["trt_engine_cache_enable"] == "True" and trt["trt_engine_cache_path"] == str(tmp_path / "onnxruntime-tensorrt")
    assert provider_options(CPU) == {}


def test_the_cuda_provider_is_opened_with_its_options(gpu_wheel, monkeypatch):
    monkeypatch.setattr(ort_backend, "tensorrt_loadable", lambda: False)
    fake = gpu_wheel(starts={CUDA})
    backend = OnnxRuntimeBackend(MODEL)
    assert fake.asked == [[(CUDA, {"use_tf32": "0"}), CPU]]
    assert backend.providers == [CUDA, CPU]
    assert backend.infer(np.zeros((1, 1, 128, 100), np.float32)).shape == (1, 527)


def test_a_gpu_provider_that_does_not_start_keeps_stdout_clean(gpu_wheel, monkeypatch, capsys, caplog):
    monkeypatch.setattr(ort_backend, "tensorrt_loadable", lambda: True)  # listed and "installed", but fails to start
    gpu_wheel(starts=())
    with caplog.at_level(logging.WARNING):
        backend = OnnxRuntimeBackend(MODEL)  # the default list: run on what started, and say so
    assert backend.providers == [CPU]
    assert "could not start TensorrtExecutionProvider" in caplog.text
    captured = capsys.readouterr()
    assert captured.out == "" and "EP Error" in captured.err  # tag --json's stdout holds only JSON
    with pytest.raises(BackendUnavailableError, match="could not start CUDAExecutionProvider .*running on CPUExecutionProvider"):
        OnnxRuntimeBackend(MODEL, providers=[CUDA, CPU])  # asked for by name (doctor): an error, not a quiet CPU run


def test_an_onnxruntime_that_refuses_the_options_runs_with_its_defaults(gpu_wheel, monkeypatch, caplog):
    monkeypatch.setattr(ort_backend, "tensorrt_loadable", lambda: False)
    fake = gpu_wheel(starts={CUDA}, known_options=False)
    with caplog.at_level(logging.WARNING):
        backend = OnnxRuntimeBackend(MODEL)
    assert fake.asked == [[(CUDA, {"use_tf32": "0"}), CPU], [CUDA, CPU]]
    assert backend.providers == [CUDA, CPU] and "refused dymn-edge's provider options" in caplog.text


def test_an_int8_bundle_on_the_cuda_provider_is_flagged_as_slower_than_fp32(gpu_wheel, monkeypatch, tmp_path, caplog):
    import json
    import shutil

    from dymn_edge.runtime.backends import create_backend
    from dymn_edge.runtime.bundle import load_bundle

    monkeypatch.setattr(ort_backend, "tensorrt_loadable", lambda: False)
    bundles = {}
    for precision in ("fp32", "int8"):  # the FP32 model under an INT8 manifest: only the label matters here
        dest = shutil.copytree(embedded_bundle_path("mn04_as"), tmp_path / precision)
        manifest = json.loads((dest / "manifest.json").read_text())
        (dest / "manifest.json").write_text(json.dumps({**manifest, "precision": precision}))
        bundles[precision] = load_bundle(dest)
    for starts, precision, warned in (({CUDA}, "int8", True), ({CUDA}, "fp32", False), ((), "int8", False)):
        gpu_wheel(starts=starts)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            create_backend("onnxruntime", bundles[precision])
        assert ("has no integer convolutions" in caplog.text) is warned, (starts, precision)


def test_device_picks_the_providers_and_insists_on_them(gpu_wheel, monkeypatch):
    from dymn_edge.runtime.backends.onnxruntime import open_onnxruntime

    edge = embedded_bundle_path("dymn04_edge")
    cpu = open_onnxruntime(edge / "model.onnx", edge / "model.nchwc.onnx", device="cpu")  # this machine's CPU wheel
    assert cpu.providers == [CPU] and cpu.model_path.name == "model.nchwc.onnx"  # the CPU's blocked kernels still apply
    with pytest.raises(BackendUnavailableError, match="onnxruntime has no CUDAExecutionProvider here"):
        open_onnxruntime(MODEL, device="CUDA")
    with pytest.raises(BackendUnavailableError, match="device 'gpu': expected one of CPU, CUDA, TensorRT"):
        open_onnxruntime(MODEL, device="gpu")
    monkeypatch.setattr(ort_backend, "tensorrt_loadable", lambda: False)
    fake = gpu_wheel(starts={CUDA})
    assert open_onnxruntime(MODEL, device="CPU").providers == [CPU] and fake.asked[-1] == [CPU]  # a GPU machine, run on its CPU
    assert open_onnxruntime(MODEL, device="cuda").providers == [CUDA, CPU]
    with pytest.raises(BackendUnavailableError, match="could not start TensorrtExecutionProvider"):
        open_onnxruntime(MODEL, device="TensorRT")  # listed by the wheel, asked for by name, did not start
