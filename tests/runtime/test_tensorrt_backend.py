"""The TensorRT backend against fake TensorRT 8.5/8.6/10.x/11.x modules (no GPU here), and real cuda-python.

The fakes (tests/fake_tensorrt.py) implement each generation's documented API only, and run the
engine's ONNX model on ONNX Runtime CPU through fake device memory: tags must come out exactly as
ONNX Runtime's, which they cannot if a buffer, a shape or an output is mixed up.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from fake_tensorrt import FakeGpu, install
from dymn_edge.export.tensorrt import BatchRange, build_tensorrt_bundle
from dymn_edge.runtime.backends import BACKENDS, create_backend
from dymn_edge.runtime.backends.tensorrt import api_generation
from dymn_edge.runtime.bundle import load_bundle, update_manifest
from dymn_edge.runtime.errors import BackendUnavailableError, BundleError
from dymn_edge.runtime.registry import demo_clip_path, embedded_bundle_path
from dymn_edge.runtime.tagging import Tagger

VERSIONS = ["8.5.2.2", "8.6.1.6", "10.3.0.30", "11.4.0.106"]


def _engine_bundle(monkeypatch, tmp_path, version, gpu=None, batch=BatchRange(1, 1, 4)):
    gpu = install(monkeypatch, version, gpu)
    return build_tensorrt_bundle(embedded_bundle_path(), tmp_path / f"trt-{version}", batch=batch), gpu


@pytest.mark.parametrize("version,generation", [("8.5.2.2", 8), ("8.6.1.6", 8), ("10.0.1.6", 10), ("10.3.0.30", 10), ("11.4.0.106", 11)])
def test_api_generation_follows_the_version(version, generation):
    assert api_generation(version) == generation


@pytest.mark.parametrize("version", ["8.4.3.1", "7.1.3", "9.0.0", "12.0.0"])
def test_unsupported_versions_are_refused(version):
    with pytest.raises(BackendUnavailableError, match=f"TensorRT {version} is not supported; dymn-edge supports TensorRT 8.5, 8.6, 10.x"):
        api_generation(version)


def test_tensorrt_is_a_registered_backend():
    assert "tensorrt" in BACKENDS


@pytest.mark.parametrize("version", VERSIONS)
def test_engine_tags_as_onnxruntime_does(monkeypatch, tmp_path, version):
    bundle, gpu = _engine_bundle(monkeypatch, tmp_path, version)
    trt_tagger = Tagger.from_bundle(bundle, "tensorrt")
    assert trt_tagger.backend.generation == api_generation(version)
    ort_tagger = Tagger.from_bundle(load_bundle(embedded_bundle_path()), "onnxruntime")
    synced = gpu.synchronized
    got = trt_tagger.tag_file(demo_clip_path(), top_k=5, hop_s=5.0)  # two windows: shapes change between runs
    want = ort_tagger.tag_file(demo_clip_path(), top_k=5, hop_s=5.0)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)
    assert [t.label for t in got.tags] == [t.label for t in want.tags]
    assert gpu.synchronized - synced == len(got.timeline)  # one stream synchronisation per inference


def test_batches_run_in_one_call_and_outside_the_profile_are_refused(monkeypatch, tmp_path):
    bundle, _ = _engine_bundle(monkeypatch, tmp_path, "10.3.0.30", batch=BatchRange(1, 2, 3))
    backend = create_backend("tensorrt", bundle)
    x = np.random.default_rng(0).standard_normal((3, 1, 128, 200)).astype(np.float32)
    ort_backend = create_backend("onnxruntime", bundle)
    np.testing.assert_allclose(backend.infer(x), ort_backend.infer(x), atol=1e-5)
    with pytest.raises(BundleError, match=r"input of shape \(4, 1, 128, 200\) is outside the engine's optimization profile "
                                          r"\(1, 1, 128, 1\)..\(3, 1, 128, 6000\); rebuild with a wider --batch"):
        backend.infer(np.zeros((4, 1, 128, 200), np.float32))


def test_fixed_batch_profile_is_the_backends_max_batch(monkeypatch, tmp_path):
    bundle, _ = _engine_bundle(monkeypatch, tmp_path, "8.6.1.6", batch=BatchRange(2, 2, 2))
    tagger = Tagger.from_bundle(bundle, "tensorrt")
    assert tagger.backend.max_batch == 2  # the tagger fills the batch and keeps the first row
    want = Tagger.from_bundle(bundle, "onnxruntime").tag_file(demo_clip_path()).scores
    np.testing.assert_allclose(tagger.tag_file(demo_clip_path()).scores, want, atol=1e-6)


def test_engine_from_another_tensorrt_version_is_refused(monkeypatch, tmp_path):
    bundle, gpu = _engine_bundle(monkeypatch, tmp_path, "8.5.2.2")
    install(monkeypatch, "8.6.1.6", gpu)
    with pytest.raises(BundleError, match=r"engine built with TensorRT 8\.5\.2\.2, this machine has TensorRT 8\.6\.1\.6\. "
                                          r"TensorRT engines only run .* rebuild it on this device with `dymn-edge export tensorrt"):
        create_backend("tensorrt", bundle)


def test_engine_from_another_gpu_is_refused(monkeypatch, tmp_path):
    bundle, _ = _engine_bundle(monkeypatch, tmp_path, "10.3.0.30", gpu=FakeGpu("Orin", 8, 7))
    install(monkeypatch, "10.3.0.30", FakeGpu("NVIDIA H200", 9, 0))
    with pytest.raises(BundleError, match=r"engine built for Orin \(compute capability 8\.7\), this machine has NVIDIA H200 "
                                          r"\(compute capability 9\.0\)\. .*rebuild it on this device"):
        create_backend("tensorrt", bundle)


def test_manifest_without_a_build_record_is_refused(monkeypatch, tmp_path):
    bundle, _ = _engine_bundle(monkeypatch, tmp_path, "10.3.0.30")
    bundle = update_manifest(bundle, {"tensorrt": None})
    with pytest.raises(BundleError, match="does not record which TensorRT version and GPU built the engine"):
        create_backend("tensorrt", bundle)


def test_bundle_without_an_engine_says_how_to_build_one(monkeypatch):
    install(monkeypatch, "10.3.0.30")
    with pytest.raises(BundleError, match=r"bundle has no 'tensorrt_engine' file \(it has checkpoint, fused_weights, labels, onnx\); TensorRT "
                                          r"engines are built on the device that runs them: dymn-edge export tensorrt .*--out BUNDLE_TRT"):
        create_backend("tensorrt", load_bundle(embedded_bundle_path()))


def test_missing_tensorrt_says_where_it_comes_from(monkeypatch, tmp_path):
    bundle, _ = _engine_bundle(monkeypatch, tmp_path, "10.3.0.30")
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt now raises ImportError
    with pytest.raises(BackendUnavailableError, match=r"TensorRT is not installed: on a Jetson it comes with JetPack \(python3-libnvinfer\)"):
        create_backend("tensorrt", bundle)


def test_missing_cuda_driver_with_real_cuda_python(monkeypatch, tmp_path):
    """Real cuda-python on this GPU-less machine: cudaGetDeviceCount reports the missing driver."""
    cudart = pytest.importorskip("cuda.bindings.runtime", reason='cuda-python is not installed (pip install "dymn-edge[tensorrt]")')
    if cudart.cudaGetDeviceCount()[0] == cudart.cudaError_t.cudaSuccess:
        pytest.skip("this machine has a CUDA driver and GPU")
    bundle, _ = _engine_bundle(monkeypatch, tmp_path, "10.3.0.30")
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)  # the real one, not the fake
    with pytest.raises(BackendUnavailableError, match=r"no usable CUDA device: cudaGetDeviceCount returned "
                                                      r"cudaError(InsufficientDriver|NoDevice)\. Install the NVIDIA driver"):
        create_backend("tensorrt", bundle)
