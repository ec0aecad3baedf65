"""`dymn-edge lint`: each target's verdict on real exports and on graphs built to break one rule each."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dymn_edge.runtime.lint import TENSORRT_RELEASES, lint_bundle, lint_onnx, tensorrt_support_table
from dymn_edge.export.onnx import export_onnx
from dymn_edge.runtime.bundle import load_bundle
from dymn_edge.runtime.errors import BundleError
from dymn_edge.runtime.registry import embedded_bundle_path
from dymn_edge.train.checkpoint import load_checkpoint

pytest.importorskip("openvino")


def _model(nodes, inputs, outputs, *, opset=17, initializers=(), domains=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


def _save(model, tmp_path, name="m.onnx"):
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _by_target(reports):
    return {r.target: r for r in reports}


def _checks(report, severity="error"):
    return [f.check for f in report.findings if f.severity == severity]


def test_tensorrt_tables_name_their_source():
    table = tensorrt_support_table()
    for key in ("8.5", "8.6", "10.x"):
        assert len(table[key]["source"]["commit"]) == 40 and table[key]["source"]["repo"] == "onnx/onnx-tensorrt"
        assert table[key]["ops"]["Conv"]["supported"] and len(table[key]["ops"]) > 170
    assert (table["8.5"]["opset_max"], table["8.6"]["opset_max"]) == (17, 17)
    assert table["10.x"]["opset_min"] == 9 and table["10.x"]["opset_max"] >= 20


def test_embedded_bundle_passes_every_target_and_records_it(tmp_path):
    bundle = shutil.copytree(embedded_bundle_path(), tmp_path / "b")
    proc = subprocess.run([sys.executable, "-m", "dymn_edge", "lint", str(bundle)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for target in ("tensorrt-8.5", "tensorrt-8.6", "tensorrt-10", "onnxruntime", "openvino"):
        assert target in proc.stdout
    recorded = load_bundle(bundle).manifest["lint"]
    assert set(recorded) == {"tensorrt-8.5", "tensorrt-8.6", "tensorrt-10", "onnxruntime", "openvino"}
    assert all(v["passed"] and v["errors"] == 0 for v in recorded.values())
    # 8.x casts the int64 shape arithmetic down to int32: a warning, not an error.
    assert recorded["tensorrt-8.5"]["warnings"] == 1 and recorded["tensorrt-10"]["warnings"] == 0


def test_an_embedded_model_is_linted_by_name_and_the_package_is_left_alone():
    manifest = embedded_bundle_path("dymn04_edge") / "manifest.json"
    before = manifest.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "dymn_edge", "lint", "dymn04_edge", "--target", "tensorrt-10", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [report] = json.loads(proc.stdout)
    # its 1x1 and depthwise kernels are computed at run time: TensorRT builds them, but not in INT8
    assert report["target"] == "tensorrt-10" and report["passed"]
    assert [f["check"] for f in report["findings"]] == ["constant-weights"]
    assert manifest.read_bytes() == before
    bad = subprocess.run([sys.executable, "-m", "dymn_edge", "lint", "no_such_model"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not an embedded model" in bad.stderr and "dymn04_edge" in bad.stderr


@pytest.fixture(scope="module")
def dymn04_graphs(fixtures_dir, tmp_path_factory):
    model = load_checkpoint(fixtures_dir / "dymn04_reference_weights.pt").model
    out = tmp_path_factory.mktemp("dymn04")
    return {s: export_onnx(model, out / f"{s}.onnx", strategy=s, batch=1, window_s=2.0) for s in ("grouped", "expanded")}


PROFILE = {"mel": {"min": [1, 1, 128, 1], "opt": [1, 1, 128, 200], "max": [1, 1, 128, 6001]}}


def test_runtime_conv_weights_are_flagged_for_tensorrt(dymn04_graphs):
    fp = _by_target(lint_onnx(dymn04_graphs["grouped"], ["tensorrt", "onnxruntime", "openvino"], profiles=PROFILE))
    for release in TENSORRT_RELEASES:
        report = fp[f"tensorrt-{release}"]
        assert report.passed, report.errors  # FP32/FP16 builds since 8.5: a warning
        [weights] = [f for f in report.warnings if f.check == "constant-weights"]
        assert weights.message.startswith("44 convolution(s) with weights computed at run time")
    assert fp["onnxruntime"].passed and fp["openvino"].passed
    int8 = _by_target(lint_onnx(dymn04_graphs["grouped"], ["tensorrt-10"], int8=True, profiles=PROFILE))
    assert _checks(int8["tensorrt-10"]) == ["constant-weights"] and "INT8 needs constant weights" in int8["tensorrt-10"].errors[0].message


def test_expanded_strategy_has_constant_weights_but_int8_group_sizes_of_1_by_4(dymn04_graphs):
    fp = lint_onnx(dymn04_graphs["expanded"], ["tensorrt-10"], profiles=PROFILE)[0]
    assert fp.passed and "constant-weights" not in _checks(fp, "warning")
    # Its depthwise kernel banks are grouped convs with 1 input and K=4 outputs per group:
    # not depthwise, and not the multiple of 4 TensorRT INT8 documents for group sizes.
    int8 = lint_onnx(dymn04_graphs["expanded"], ["tensorrt-10"], int8=True, profiles=PROFILE)[0]
    assert _checks(int8) == ["int8-groups"]
    assert "15 grouped convolution(s)" in int8.errors[0].message and "1 in / 4 out per group" in int8.errors[0].where


def test_operator_support_differs_by_tensorrt_release(tmp_path):
    # LayerNormalization (opset 17) arrived in TensorRT 8.6.
    scale = numpy_helper.from_array(np.ones(8, np.float32), "scale")
    model = _model([helper.make_node("LayerNormalization", ["x", "scale"], ["y"], name="ln")],
                   [_vi("x", [2, 8])], [_vi("y", [2, 8])], initializers=[scale])
    reports = _by_target(lint_onnx(_save(model, tmp_path), ["tensorrt", "onnxruntime"]))
    assert _checks(reports["tensorrt-8.5"]) == ["operator"] and "LayerNormalization is not supported by TensorRT 8.5" in reports["tensorrt-8.5"].errors[0].message
    assert reports["tensorrt-8.6"].passed and reports["tensorrt-10"].passed and reports["onnxruntime"].passed


def test_opset_outside_a_release_range(tmp_path):
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [1, 4])], [_vi("y", [1, 4])], opset=18)
    reports = _by_target(lint_onnx(_save(model, tmp_path), ["tensorrt"]))
    for release in ("8.5", "8.6"):
        assert _checks(reports[f"tensorrt-{release}"]) == ["opset"]
        assert "opset 18 is outside TensorRT" in reports[f"tensorrt-{release}"].errors[0].message and "--opset 17" in reports[f"tensorrt-{release}"].errors[0].message
    assert reports["tensorrt-10"].passed


def test_custom_domain_operator_fails_everywhere(tmp_path):
    model = _model([helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example", name="frob")],
                   [_vi("x", [1, 4])], [_vi("y", [1, 4])], domains=["com.example"])
    reports = _by_target(lint_onnx(_save(model, tmp_path), ["tensorrt-10", "onnxruntime", "openvino"]))
    assert "custom domain 'com.example'" in reports["tensorrt-10"].errors[0].message
    assert "no CPU kernel for com.example.Frobnicate" in reports["onnxruntime"].errors[0].message
    assert not reports["openvino"].passed and "Frobnicate" in reports["openvino"].errors[0].message


def test_dynamic_axes_need_a_profile(tmp_path):
    model = _model([helper.make_node("Relu", ["mel"], ["y"])], [_vi("mel", ["batch", 1, 128, "frames"])], [_vi("y", None)])
    path = _save(model, tmp_path)
    report = lint_onnx(path, ["tensorrt-10"])[0]
    assert _checks(report) == ["dynamic-shape"] and "input 'mel' has dynamic axes [0, 3]" in report.errors[0].message
    assert lint_onnx(path, ["tensorrt-10"], profiles=PROFILE)[0].passed


def test_int8_group_sizes(tmp_path):
    def conv(groups, channels=8):
        w = numpy_helper.from_array(np.ones((channels, channels // groups, 3, 3), np.float32), "w")
        return _model([helper.make_node("Conv", ["x", "w"], ["y"], group=groups, pads=[1, 1, 1, 1], name=f"conv_g{groups}")],
                      [_vi("x", [1, channels, 16, 16])], [_vi("y", [1, channels, 16, 16])], initializers=[w])

    for groups, ok in ((8, True), (2, True), (4, False)):  # depthwise / 4 per group / 2 per group
        path = _save(conv(groups), tmp_path, f"g{groups}.onnx")
        assert lint_onnx(path, ["tensorrt-10"], int8=True)[0].passed is ok, groups
        assert lint_onnx(path, ["tensorrt-10"])[0].passed  # FP32: no group-size rule


def test_unsupported_dtypes(tmp_path):
    model = _model([helper.make_node("Add", ["a", "b"], ["y"], name="add_u16")],
                   [_vi("a", [4], TensorProto.UINT16), _vi("b", [4], TensorProto.UINT16)], [_vi("y", [4], TensorProto.UINT16)])
    report = lint_onnx(_save(model, tmp_path), ["tensorrt-8.6"])[0]
    assert _checks(report) == ["dtype"] and "Add on UINT16 input 'a'" in report.errors[0].message


def test_bad_input(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a protobuf\xff" * 10)
    with pytest.raises(BundleError, match="junk.onnx: not a readable ONNX model"):
        lint_onnx(junk, ["tensorrt-10"])
    bundle = shutil.copytree(embedded_bundle_path(), tmp_path / "b")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"] = {k: v for k, v in manifest["files"].items() if v["role"] != "onnx"}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="bundle has no 'onnx' file"):
        lint_bundle(bundle)
    proc = subprocess.run([sys.executable, "-m", "dymn_edge", "lint", str(embedded_bundle_path()), "--target", "tflite"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "'tflite' is not one of" in proc.stderr


def test_cli_exit_code_is_1_when_a_target_fails(tmp_path, dymn04_graphs):
    bundle = shutil.copytree(embedded_bundle_path(), tmp_path / "b")
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["shape_profiles"]  # dynamic batch and frames with no profile: TensorRT cannot build it
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    proc = subprocess.run([sys.executable, "-m", "dymn_edge", "lint", str(bundle), "--target", "tensorrt-10", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    [report] = json.loads(proc.stdout)
    assert report["target"] == "tensorrt-10" and not report["passed"] and report["findings"][0]["check"] == "dynamic-shape"
    assert load_bundle(bundle).manifest["lint"]["tensorrt-10"]["passed"] is False
