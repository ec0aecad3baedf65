"""`dymn-edge validate`: metrics against labels and against the reference, a report, and gates that bite."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from dymn_edge.runtime.bundle import derived_metadata, load_bundle, write_bundle
from dymn_edge.runtime.labels import LabelSet
from dymn_edge.runtime.registry import embedded_bundle_path


def _cli(*args, cwd):
    # rich wraps table titles at the terminal width, and the title holds the bundle's path: a wide
    # console keeps the checks below independent of where the checkout sits.
    env = {**os.environ, "COLUMNS": "240"}
    return subprocess.run([sys.executable, "-m", "dymn_edge", *map(str, args)], capture_output=True, text=True, timeout=900, cwd=cwd,
                          env=env)


def _edited_bundle(tmp_path, name, edit, num_classes=None):
    """A copy of the embedded mn04_as whose ONNX graph went through ``edit``."""
    source = load_bundle(embedded_bundle_path())
    model = onnx.load(str(source.require("onnx")))
    edit(model)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    metadata = derived_metadata(source.manifest, drop=("lint",))
    labels = source.labels
    if num_classes:
        metadata.update(num_classes=num_classes, name=name)
        metadata["outputs"][0]["shape"][1] = num_classes
        labels = LabelSet.placeholder(num_classes)
    return write_bundle(tmp_path / name, {"model.onnx": (path, "onnx")}, metadata, labels=labels).path


def _scramble_classifier(model):
    """Swap rows of the output layer: a 'quantized' model whose class scores went to the wrong classes."""
    for t in model.graph.initializer:
        if t.name.startswith("classifier.5."):
            a = numpy_helper.to_array(t).copy()
            rng = np.random.default_rng(0)
            a = a[rng.permutation(a.shape[0])]
            t.CopyFrom(numpy_helper.from_array(a, t.name))


def _ten_classes(model):
    for t in model.graph.initializer:
        if t.name.startswith("classifier.5."):
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t)[:10].copy(), t.name))
    for out in model.graph.output:
        if out.name == "logits":
            out.type.tensor_type.shape.dim[1].dim_value = 10


@pytest.fixture(scope="module")
def int8_candidate(shared, tmp_path_factory):
    from dymn_edge.calibration.calibrate import calibrate_bundle

    out = tmp_path_factory.mktemp("cand") / "mn04_int8"
    return calibrate_bundle(embedded_bundle_path(), shared / "data" / "pool", out, samples=32, progress=False).path


def test_gates_pass_for_int8_and_fail_for_a_broken_candidate(shared, tmp_path, int8_candidate):
    broken = _edited_bundle(tmp_path, "scrambled", _scramble_classifier)
    proc = _cli("validate", "--reference", embedded_bundle_path(), "--candidate", int8_candidate, "--candidate", broken,
                "--audio", shared / "data" / "esc50" / "labels.csv", "--samples", "60", "--report", tmp_path / "report",
                "--gate", "top5_agreement=0.6", "--gate", "map_drop=0.1", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "gate failed: scrambled: top5_agreement = " in proc.stderr and "must be at least 0.6" in proc.stderr
    assert "gate failed: mn04_int8" not in proc.stderr  # the real INT8 model passes these gates
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    ref = report["reference"]
    int8, scrambled = report["candidates"]
    assert ref["labelled"]["map"] > 0.8 and ref["labelled"]["top5_hit"] > 0.8  # real audio, real model
    assert int8["passed"] and not scrambled["passed"] and not report["passed"]
    assert int8["fidelity"]["top5_agreement"] > 0.7 and scrambled["fidelity"]["top5_agreement"] < 0.3
    assert scrambled["labelled"]["map"] < 0.3 < int8["labelled"]["map"]
    assert {g["gate"] for g in int8["gates"]} == {"top5_agreement", "map_drop"}
    assert int8["latency_ms"] > 0 and report["settings"]["windows"] == 60
    assert int8["scope"] == "pointwise" and ref["scope"] is None and scrambled["scope"] is None  # how each was quantized
    assert "int8 (pointwise)" in proc.stdout
    html = (tmp_path / "report" / "report.html").read_text()
    assert "Gates failed" in html and "scrambled" in html and "per_class_ap.png" in html and "<td>int8 (pointwise)</td>" in html
    for png in ("per_class_ap.png", "logit_errors.png", "latency.png"):
        assert (tmp_path / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unlabelled_audio_gives_fidelity_only(shared, tmp_path, int8_candidate):
    proc = _cli("validate", "--reference", embedded_bundle_path(), "--candidate", int8_candidate, "--audio", shared / "data" / "streaming",
                "--report", tmp_path / "r", "--gate", "top1_agreement=0.5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["reference"]["labelled"] is None and report["candidates"][0]["fidelity"]["top1_agreement"] >= 0.5
    proc = _cli("validate", "--reference", embedded_bundle_path(), "--candidate", int8_candidate, "--audio", shared / "data" / "streaming",
                "--report", tmp_path / "r2", "--gate", "map_drop=0.01", cwd=tmp_path)
    assert proc.returncode == 1 and "gate map_drop needs labels" in proc.stderr


def test_bad_input(shared, tmp_path):
    ten = _edited_bundle(tmp_path, "ten_classes", _ten_classes, num_classes=10)
    proc = _cli("validate", "--reference", embedded_bundle_path(), "--candidate", ten, "--audio", shared / "data" / "streaming",
                "--report", tmp_path / "r", cwd=tmp_path)
    assert proc.returncode == 1 and "ten_classes: 10 classes; the reference" in proc.stderr and "has 527" in proc.stderr
    proc = _cli("validate", "--reference", embedded_bundle_path(), "--candidate", embedded_bundle_path(), "--audio", shared / "data" / "streaming",
                "--report", tmp_path / "r", "--gate", "accuracy=0.9", cwd=tmp_path)
    assert proc.returncode == 1 and "gate 'accuracy=0.9': expected NAME=VALUE with NAME one of map_drop" in proc.stderr


def test_sensitivity_ranks_the_parts(shared, tmp_path):
    """Under the default pointwise scope, parts without a pointwise layer (the stem, and the
    classifier, whose Gemms stay in float) are not in the table; with --scope all every part is."""
    rows = {}
    for scope in ("pointwise", "all"):
        proc = _cli("calibrate", embedded_bundle_path(), "--audio", shared / "data" / "pool", "--samples", "32", "--sensitivity",
                    "--scope", scope, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        text = " ".join(proc.stdout.split())
        assert "most harmful first" in text and f"{scope} scope" in text, proc.stdout
        rows[scope] = {line.split()[1] for line in proc.stdout.splitlines() if line.startswith("│")}
    assert "features.16" in rows["pointwise"] and not {"features.0", "classifier"} & rows["pointwise"]
    assert {"features.0", "features.16", "classifier"} <= rows["all"]


def test_calibrate_cli_refuses_an_unknown_scope(shared, tmp_path):
    proc = _cli("calibrate", embedded_bundle_path(), "--audio", shared / "data" / "pool", "--out", tmp_path / "x", "--scope", "depthwise",
                cwd=tmp_path)
    assert proc.returncode == 2 and "Invalid value for '--scope': 'depthwise' is not one of 'pointwise', 'all'" in proc.stderr, proc.stderr
    assert not (tmp_path / "x").exists()


def test_calibrate_cli_activation_type(shared, tmp_path):
    """--activations uint8 is ONNX Runtime's; other backends refuse it before any work, naming why."""
    proc = _cli("calibrate", embedded_bundle_path(), "--audio", shared / "data" / "pool", "--out", tmp_path / "x", "--backend", "tensorrt",
                "--activations", "uint8", cwd=tmp_path)
    assert proc.returncode != 0 and "uint8 activations are an ONNX Runtime option; tensorrt" in proc.stderr, proc.stderr
    assert not (tmp_path / "x").exists()
    proc = _cli("calibrate", embedded_bundle_path(), "--audio", shared / "data" / "pool", "--out", tmp_path / "u8", "--activations", "uint8",
                "--samples", "16", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "pointwise scope of 28 layers, uint8 activations" in proc.stdout and load_bundle(tmp_path / "u8").manifest["quantization"]["activations"] == "uint8"
