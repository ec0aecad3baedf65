"""`dymn-edge doctor`: the components it finds on this machine, and a bundle checked on every backend against ONNX Runtime CPU."""

from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

from fake_tensorrt import FakeGpu, install
from dymn_edge.cli import cli
from dymn_edge.export.tensorrt import BatchRange, build_tensorrt_bundle
from dymn_edge.runtime.registry import embedded_bundle_path


def _doctor(*args):
    result = CliRunner().invoke(cli, ["doctor", *args])
    return result


def test_components_of_this_machine(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as here: TensorRT cannot be installed without NVIDIA's index
    result = _doctor("--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    components = report["components"]
    assert set(components) == {"onnxruntime", "openvino", "tensorrt", "fused", "cuda", "audio_inputs"}
    assert components["fused"]["available"] and components["fused"]["build"] in ("avx512", "avx2", "generic")
    assert components["onnxruntime"]["available"] and "CPUExecutionProvider" in components["onnxruntime"]["providers"]
    assert components["tensorrt"] == {"available": False, "reason": components["tensorrt"]["reason"]}
    assert components["tensorrt"]["reason"].startswith("TensorRT is not installed: on a Jetson it comes with JetPack")
    if not components["cuda"]["available"]:  # no GPU here: cuda-python's answer, or cuda-python missing
        assert "no usable CUDA device" in components["cuda"]["reason"] or "cuda-python is not installed" in components["cuda"]["reason"]
    assert report["bundle"] is None and report["runs"] == []


def test_bundle_on_every_backend_agrees_with_onnxruntime_cpu(monkeypatch, tmp_path):
    install(monkeypatch, "10.3.0.30")
    bundle = build_tensorrt_bundle(embedded_bundle_path(), tmp_path / "trt", batch=BatchRange(1, 1, 2))
    result = _doctor(str(bundle.path), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["components"]["tensorrt"] == {"available": True, "version": "10.3.0.30", "api": 10}
    assert report["components"]["cuda"]["device"]["name"] == "Orin"
    runs = {(r["backend"], r["device"]): r for r in report["runs"]}
    assert runs[("onnxruntime", "CPU")]["status"] == "reference"
    trt = runs[("tensorrt", "Orin")]
    assert trt["status"] == "ok" and trt["max_abs_logit_diff"] < 1e-5 and trt["ms"] > 0
    if report["components"]["openvino"]["available"]:
        assert runs[("openvino", "CPU")]["status"] == "ok" and runs[("openvino", "CPU")]["max_abs_logit_diff"] < 1e-3


def test_a_backend_that_cannot_run_the_bundle_fails_the_check(monkeypatch, tmp_path):
    install(monkeypatch, "10.3.0.30", FakeGpu("Orin", 8, 7))
    bundle = build_tensorrt_bundle(embedded_bundle_path(), tmp_path / "trt")
    install(monkeypatch, "10.3.0.30", FakeGpu("NVIDIA H200", 9, 0))
    result = _doctor(str(bundle.path), "--json")
    assert result.exit_code == 1
    trt = next(r for r in json.loads(result.output)["runs"] if r["backend"] == "tensorrt")
    assert trt["status"] == "error" and "built for Orin" in trt["detail"] and "rebuild it on this device" in trt["detail"]


def test_tables_show_install_hints_verbatim(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    result = CliRunner().invoke(cli, ["doctor"], env={"COLUMNS": "240"})  # one line per hint
    assert result.exit_code == 0, result.output
    assert "backends and devices" in result.output
    assert 'pip install "dymn-edge[tensorrt]"' in result.output  # rich would swallow "[tensorrt]" as markup


@pytest.mark.parametrize("args", [["--nope"], ["/no/such/bundle"]])
def test_bad_arguments_exit_2(args):
    assert _doctor(*args).exit_code == 2


def test_a_dymn_bundle_runs_on_the_fused_backend_too():
    result = _doctor(str(embedded_bundle_path("dymn04_edge")), "--json")
    assert result.exit_code == 0, result.output
    runs = {(r["backend"], r["device"]): r for r in json.loads(result.output)["runs"]}
    fused = runs[("fused", "CPU")]
    assert fused["status"] == "ok" and fused["max_abs_logit_diff"] < 1e-4 and fused["ms"] > 0


def test_gpu_tolerances_follow_what_the_gpu_computes():
    """ONNX Runtime's CUDA provider runs without TF32 (measured 2.3e-4 on an H200), so it is held to the
    CPU's FP32 tolerance; TensorRT (TF32 by default) keeps the GPU budget."""
    from dymn_edge.doctor import PARITY_ATOL, _tolerance
    from dymn_edge.runtime.bundle import load_bundle

    bundle = load_bundle(embedded_bundle_path("mn04_as"))
    assert _tolerance("onnxruntime", "CUDA", bundle) == PARITY_ATOL["fp32"] == 1e-3
    assert _tolerance("openvino", "CPU", bundle) == 1e-3
    assert _tolerance("onnxruntime", "TensorRT EP", bundle) == _tolerance("tensorrt", "NVIDIA H200", bundle) == PARITY_ATOL["tf32"]
    assert _tolerance("openvino", "GPU", bundle) == PARITY_ATOL["tf32"]
