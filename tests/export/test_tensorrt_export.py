"""`dymn-edge export tensorrt` up to the TensorRT calls, for real; the calls themselves against fake 8.x/10.x/11.x modules.

Real here: the ONNX models that go in (the embedded mn04_as, and the Q/DQ model, FP32 model and
calibration cache that `dymn-edge calibrate --backend tensorrt` writes from real audio), lint,
the Q/DQ rules and the cache's coverage. Faked (tests/fake_tensorrt.py): TensorRT and the GPU.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from fake_tensorrt import install
from dymn_edge.calibration.calibrate import calibrate_bundle
from dymn_edge.runtime.tensorrt_int8 import cache_coverage, check_qdq, read_calibration_cache
from dymn_edge.cli import cli
from dymn_edge.export.tensorrt import BatchRange, build_tensorrt_bundle
from dymn_edge.runtime.bundle import derived_metadata, load_bundle, update_manifest, write_bundle
from dymn_edge.runtime.errors import BackendUnavailableError, CalibrationError, ExportError
from dymn_edge.runtime.lint import lint_onnx
from dymn_edge.runtime.registry import embedded_bundle_path


@pytest.fixture(scope="module")
def qdq_bundle(shared, tmp_path_factory):
    """The TensorRT INT8 bundle calibration writes: Q/DQ model.onnx, model.fp32.onnx, calibration.cache (TRT-8502)."""
    out = tmp_path_factory.mktemp("trt-int8") / "mn04_int8"
    return calibrate_bundle(embedded_bundle_path(), shared / "data" / "pool", out, backend="tensorrt", method="entropy",
                            samples=16, progress=False)


def _copy(bundle_path, tmp_path, **changes):
    dest = tmp_path / "copy"
    shutil.copytree(bundle_path, dest)
    return update_manifest(load_bundle(dest), changes)


def test_fp32_on_tensorrt_8_5_uses_explicit_batch_the_workspace_pool_and_the_profile(monkeypatch, tmp_path):
    built = []
    install(monkeypatch, "8.5.2.2", built=built)
    source = load_bundle(embedded_bundle_path())
    profiles = {"mel": {"min": [1, 1, 128, 1], "opt": [2, 1, 128, 1000], "max": [4, 1, 128, 6000]}}
    assert all(r.passed for r in lint_onnx(source.require("onnx"), ["tensorrt"], profiles=profiles))  # what goes in builds on 8.5/8.6/10
    out = build_tensorrt_bundle(source, tmp_path / "trt", batch=BatchRange(1, 2, 4), workspace_mb=256)
    network, config = built[0]
    assert network.explicit_batch and config.pools == {"WORKSPACE": 256 << 20} and config.flags == set()
    assert config.profiles[0].shapes == {"mel": tuple(profiles["mel"][k] for k in ("min", "opt", "max"))}
    record = out.manifest["tensorrt"]
    assert record["version"] == "8.5.2.2" and record["api"] == 8 and record["device"] == {"name": "Orin", "compute_capability": "8.7"}
    assert record["precision"] == out.precision == "fp32" and record["int8"] is None and record["profile"] == profiles
    assert record["parity"]["max_abs_logit_diff"] < 1e-5  # the fake runs the same ONNX on ONNX Runtime
    roles = {e["role"] for e in out.manifest["files"].values()}
    assert roles == {"onnx", "checkpoint", "labels", "tensorrt_engine"}  # the ONNX model stays: ONNX Runtime still runs it


@pytest.mark.parametrize("version", ["10.3.0.30", "8.6.1.6"])
def test_fp16_sets_the_builder_flag(monkeypatch, tmp_path, version):
    built = []
    install(monkeypatch, version, built=built)
    out = build_tensorrt_bundle(embedded_bundle_path(), tmp_path / "trt", fp16=True)
    assert built[0][1].flags == {"FP16"} and out.precision == "fp16" and out.manifest["tensorrt"]["fp16"] is True


def test_fp16_on_tensorrt_11_is_refused(monkeypatch, tmp_path):
    install(monkeypatch, "11.4.0.106")
    with pytest.raises(ExportError, match=r"TensorRT 11\.4\.0\.106 removed BuilderFlag\.FP16 \(strongly typed networks only\)"):
        build_tensorrt_bundle(embedded_bundle_path(), tmp_path / "trt", fp16=True)


def test_qdq_bundle_builds_explicit_int8(monkeypatch, tmp_path, qdq_bundle):
    qdq = qdq_bundle.require("onnx")
    assert check_qdq(qdq) == []  # the Q/DQ structure TensorRT's explicit quantization expects
    assert lint_onnx(qdq, ["tensorrt-10"], int8=True, profiles=qdq_bundle.manifest["shape_profiles"])[0].passed
    built = []
    install(monkeypatch, "10.3.0.30", built=built)
    out = build_tensorrt_bundle(qdq_bundle, tmp_path / "trt", int8=True, batch=BatchRange(1, 1, 1))
    network, config = built[0]
    assert config.flags == {"INT8"} and config.int8_calibrator is None
    assert {n.op_type for n in network.model.graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    assert out.precision == "int8" and out.manifest["tensorrt"]["int8"] == "explicit-qdq" and out.manifest["tensorrt"]["onnx"] == "model.onnx"


def test_qdq_bundle_on_tensorrt_11_is_strongly_typed(monkeypatch, tmp_path, qdq_bundle):
    built = []
    install(monkeypatch, "11.4.0.106", built=built)
    out = build_tensorrt_bundle(qdq_bundle, tmp_path / "trt", int8=True)
    assert built[0][1].flags == set() and out.manifest["tensorrt"]["int8"] == "explicit-qdq"


def test_calibration_cache_feeds_the_implicit_calibrator(monkeypatch, tmp_path, qdq_bundle):
    cache = qdq_bundle.file("calibration_cache")
    header, scales = read_calibration_cache(cache)
    assert header == "TRT-8502-EntropyCalibration2"
    assert cache_coverage(qdq_bundle.file("onnx_fp32"), scales) == []  # every tensor TensorRT will ask for
    built = []
    install(monkeypatch, "8.5.2.2", built=built)
    out = build_tensorrt_bundle(qdq_bundle, tmp_path / "trt", int8=True, calibration_cache=cache)
    network, config = built[0]
    assert config.flags == {"INT8"} and type(config.int8_calibrator).__mro__[1].__name__ == "IInt8EntropyCalibrator2"
    assert config.int8_calibrator.read_calibration_cache() == cache.read_bytes() and config.int8_calibrator.get_batch(["mel"]) is None
    assert config.calibration_profile is config.profiles[0]
    assert not any(n.op_type == "QuantizeLinear" for n in network.model.graph.node)  # the FP32 model, not the Q/DQ one
    assert out.manifest["tensorrt"]["int8"] == "calibration-cache" and out.manifest["tensorrt"]["onnx"] == "model.fp32.onnx"
    assert out.manifest["tensorrt"]["calibration_cache_header"] == header


def test_int8_without_calibration_data_is_refused_before_tensorrt_is_needed(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(ExportError, match=r"--int8 needs calibration data, and this fp32 bundle has none: pass --calibration-cache FILE, "
                                          r"or build the Q/DQ bundle that `dymn-edge calibrate .* --backend tensorrt --out INT8_BUNDLE` writes"):
        build_tensorrt_bundle(embedded_bundle_path(), tmp_path / "trt", int8=True)
    with pytest.raises(ExportError, match="--calibration-cache is only used for INT8: add --int8"):
        build_tensorrt_bundle(embedded_bundle_path(), tmp_path / "trt", calibration_cache=tmp_path / "c.cache")


def test_cache_for_another_model_is_refused(monkeypatch, tmp_path, qdq_bundle):
    lines = qdq_bundle.file("calibration_cache").read_text().splitlines()
    partial = tmp_path / "partial.cache"
    partial.write_text("\n".join(lines[: len(lines) // 2]) + "\n")
    install(monkeypatch, "8.5.2.2")
    with pytest.raises(ExportError, match=r"partial.cache: no scale for \d+ tensor\(s\) TensorRT will ask for, e\.g\. .*recalibrate"):
        build_tensorrt_bundle(qdq_bundle, tmp_path / "trt", int8=True, calibration_cache=partial)
    garbage = tmp_path / "garbage.cache"
    garbage.write_text("not a cache\n")
    with pytest.raises(CalibrationError, match="not a TensorRT calibration cache"):
        build_tensorrt_bundle(qdq_bundle, tmp_path / "trt", int8=True, calibration_cache=garbage)


def test_cache_for_another_tensorrt_version_is_refused(monkeypatch, tmp_path, qdq_bundle):
    install(monkeypatch, "10.3.0.30")
    with pytest.raises(ExportError, match=r"written for TensorRT 8502 \(header TRT-8502-EntropyCalibration2\), this is TensorRT "
                                          r"10\.3\.0\.30 \(100300\); .*--tensorrt-version 10\.3\.0\.30"):
        build_tensorrt_bundle(qdq_bundle, tmp_path / "trt", int8=True, calibration_cache=qdq_bundle.file("calibration_cache"))
    install(monkeypatch, "11.4.0.106")
    with pytest.raises(ExportError, match=r"TensorRT 11\.4\.0\.106 has no INT8 calibrators: build the Q/DQ bundle instead"):
        build_tensorrt_bundle(qdq_bundle, tmp_path / "trt", int8=True, calibration_cache=qdq_bundle.file("calibration_cache"))


def test_qdq_bundle_needs_int8_and_must_follow_tensorrts_rules(monkeypatch, tmp_path, qdq_bundle):
    install(monkeypatch, "10.3.0.30")
    with pytest.raises(ExportError, match=r"this is an INT8 \(Q/DQ\) bundle: add --int8"):
        build_tensorrt_bundle(qdq_bundle, tmp_path / "trt")
    model = onnx.load(str(qdq_bundle.require("onnx")))
    zero = next(t for t in model.graph.initializer if t.name.endswith("_zero_point"))
    zero.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(zero) + 3, zero.name))  # asymmetric: TensorRT refuses it
    onnx.save(model, str(tmp_path / "model.onnx"))
    meta = derived_metadata(qdq_bundle.manifest)
    broken = write_bundle(tmp_path / "broken", {"model.onnx": (tmp_path / "model.onnx", "onnx")}, meta, labels=qdq_bundle.labels)
    with pytest.raises(ExportError, match=r"not a Q/DQ model TensorRT accepts: .*zero point must be int8 0"):
        build_tensorrt_bundle(broken, tmp_path / "trt", int8=True)


def test_batch_ranges_the_model_cannot_take_are_refused(monkeypatch, tmp_path):
    install(monkeypatch, "10.3.0.30")
    with pytest.raises(ExportError, match=r"--batch '8:1:4': expected 1 <= MIN <= OPT <= MAX"):
        BatchRange.parse("8:1:4")
    fixed = _copy(embedded_bundle_path(), tmp_path, inputs=[{"name": "mel", "shape": [1, 1, 128, "frames"], "dtype": "float32"}])
    with pytest.raises(ExportError, match=r"the model was exported for batch 1; --batch 1:2:4 needs a re-export"):
        build_tensorrt_bundle(fixed, tmp_path / "trt", batch=BatchRange(1, 2, 4))


def test_dynamic_model_without_a_shape_profile_fails_lint(monkeypatch, tmp_path):
    install(monkeypatch, "10.3.0.30")
    bundle = _copy(embedded_bundle_path(), tmp_path, shape_profiles=None)
    with pytest.raises(ExportError, match=r"TensorRT 10\.3\.0\.30 would refuse this model \(tensorrt-10\): mel: input 'mel' has dynamic axes"):
        build_tensorrt_bundle(bundle, tmp_path / "trt")


def test_timing_cache_is_read_and_updated(monkeypatch, tmp_path):
    install(monkeypatch, "10.3.0.30")
    cache = tmp_path / "timing.cache"
    build_tensorrt_bundle(embedded_bundle_path(), tmp_path / "a", timing_cache=cache)
    build_tensorrt_bundle(embedded_bundle_path(), tmp_path / "b", timing_cache=cache)
    assert cache.read_text() == '{"10.3.0.30": 2}'  # the second build started from the first one's cache


def test_missing_cuda_driver_is_reported_before_building(monkeypatch, tmp_path):
    cudart = pytest.importorskip("cuda.bindings.runtime", reason='cuda-python is not installed (pip install "dymn-edge[tensorrt]")')
    if cudart.cudaGetDeviceCount()[0] == cudart.cudaError_t.cudaSuccess:
        pytest.skip("this machine has a CUDA driver and GPU")
    built = []
    install(monkeypatch, "10.3.0.30", built=built)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
    with pytest.raises(BackendUnavailableError, match="no usable CUDA device: cudaGetDeviceCount returned"):
        build_tensorrt_bundle(embedded_bundle_path(), tmp_path / "trt")
    assert built == []


def test_builder_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"  # import torch now fails, as on a Jetson without it
            "import dymn_edge.export.tensorrt, dymn_edge.runtime.backends.tensorrt\n"
            "assert sys.modules['torch'] is None and not [m for m in sys.modules if m.startswith('torch.')]\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_cli_export_tensorrt(monkeypatch, tmp_path):
    install(monkeypatch, "10.3.0.30")
    runner = CliRunner()
    result = runner.invoke(cli, ["export", "tensorrt", str(embedded_bundle_path()), "--out", str(tmp_path / "trt"), "--fp16",
                                 "--batch", "1:1:2", "--workspace", "512"])
    assert result.exit_code == 0, result.output
    assert "TensorRT 10.3.0.30 engine (fp16) for Orin (compute capability 8.7)" in result.output
    assert "max |logit diff| vs ONNX Runtime CPU" in result.output
    assert load_bundle(tmp_path / "trt").manifest["tensorrt"]["workspace_mb"] == 512
    bad = runner.invoke(cli, ["export", "tensorrt", str(embedded_bundle_path()), "--out", str(tmp_path / "x"), "--batch", "4"])
    assert bad.exit_code == 2 and "expected MIN:OPT:MAX" in bad.output
    no_data = runner.invoke(cli, ["export", "tensorrt", str(embedded_bundle_path()), "--out", str(tmp_path / "x"), "--int8"])
    assert no_data.exit_code == 1 and "Error: " in no_data.output and "--int8 needs calibration data" in no_data.output


def test_an_engine_bundle_of_a_dymn_drops_the_fused_record_with_the_file(monkeypatch, tmp_path):
    """The engine bundle keeps the ONNX model but not model.fused.npz, so it must not claim to carry it."""
    install(monkeypatch, "10.3.0.30")
    source = load_bundle(embedded_bundle_path("dymn04_edge"))
    assert source.manifest["fused"]["included"] and source.file("fused_weights") is not None
    out = build_tensorrt_bundle(source, tmp_path / "trt", batch=BatchRange(1, 1, 1))
    assert out.file("tensorrt_engine") is not None and out.file("onnx") is not None
    assert out.file("fused_weights") is None and "fused" not in out.manifest
