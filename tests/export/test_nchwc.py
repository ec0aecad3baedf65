"""model.nchwc.onnx: ONNX Runtime's blocked form of run-time-kernel depthwise convolutions.

Parity of every strategy x batch is in test_strategies.py; here: which convolutions are rewritten,
what the bundle records, and which file the runtime runs.
"""

import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from dymn_edge.export.fused import add_fused_weights
from dymn_edge.export.onnx import add_nchwc_graph, export_bundle
from dymn_edge.runtime.audio import load_audio
from dymn_edge.runtime.backends import create_backend
from dymn_edge.runtime.backends.onnxruntime import NCHWC_ENV, NCHWC_FILE, NCHWC_FORMAT
from dymn_edge.runtime.bundle import derived_metadata, load_bundle, write_bundle
from dymn_edge.runtime.errors import BundleError, ExportError
from dymn_edge.runtime.frontend import log_mel
from dymn_edge.runtime.nchwc import NCHWC_DOMAIN, nchwc_graph, runtime_kernel_shapes
from dymn_edge.runtime.registry import demo_clip_path, embedded_bundle_path
from dymn_edge.train.checkpoint import load_checkpoint


def _conv_graph(channels=24, multiplier=1, strides=(1, 1), auto_pad=None, bias=True, second_strided=False):
    """x (1, C, 20, 30) and a kernel fed as a graph input (so it is a run-time tensor) into one grouped Conv."""
    k = 3
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 20, 30]),
              helper.make_tensor_value_info("w", TensorProto.FLOAT, [channels * multiplier, 1, k, k])]
    conv_inputs = ["x", "w"]
    if bias:
        inputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, [channels * multiplier]))
        conv_inputs.append("b")
    attrs = {"group": channels, "kernel_shape": [k, k], "strides": list(strides)}
    attrs.update({"auto_pad": auto_pad} if auto_pad else {"pads": [1, 1, 1, 1]})
    nodes = [helper.make_node("Conv", conv_inputs, ["y"], name="dw", **attrs)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if second_strided:
        nodes.append(helper.make_node("Conv", ["y", "w"], ["z"], name="dw2", group=channels, kernel_shape=[k, k],
                                      strides=[2, 2], pads=[1, 1, 1, 1]))
        outputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _feeds(channels=24, multiplier=1, bias=True, seed=0):
    rng = np.random.default_rng(seed)
    feeds = {"x": rng.standard_normal((1, channels, 20, 30), dtype=np.float32),
             "w": rng.standard_normal((channels * multiplier, 1, 3, 3), dtype=np.float32)}
    if bias:
        feeds["b"] = rng.standard_normal(channels * multiplier, dtype=np.float32)
    return feeds


@pytest.mark.parametrize("channels", [16, 24, 7])
def test_depthwise_with_a_run_time_kernel_runs_blocked_and_exactly(channels):
    """24 and 7 channels are padded to 32 and 16 (kernel, input and bias); ReorderOutput keeps the
    padded channels and a Slice cuts them off, so the graph runs with AVX2's block of 8 as well."""
    model, feeds = _conv_graph(channels), _feeds(channels)
    blocked = nchwc_graph(model, {"w": (channels, 1, 3, 3)})
    assert blocked.rewritten == ["dw"] and blocked.left_out == []
    ops = [(n.domain, n.op_type) for n in blocked.model.graph.node]
    assert (NCHWC_DOMAIN, "Conv") in ops and ("", "Conv") not in ops
    assert any(n.op_type == "Pad" for n in blocked.model.graph.node) == (channels % 16 != 0)
    reorder = next(n for n in blocked.model.graph.node if n.op_type == "ReorderOutput")
    assert helper.get_attribute_value(reorder.attribute[0]) == -(-channels // 16) * 16
    assert any(n.op_type == "Slice" for n in blocked.model.graph.node) == (channels % 16 != 0)
    expected = _run(model, feeds)
    got = _run(blocked.model, feeds)
    assert got.shape == expected.shape == (1, channels, 20, 30)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert [n.op_type for n in model.graph.node] == ["Conv"]  # the caller's model is left portable


def test_only_depthwise_convolutions_with_explicit_pads_are_rewritten():
    # A depth multiplier of 2 is grouped but not depthwise: the blocked kernel would read it wrongly.
    assert nchwc_graph(_conv_graph(16, multiplier=2), {"w": (32, 1, 3, 3)}).rewritten == []
    assert nchwc_graph(_conv_graph(16, auto_pad="SAME_UPPER"), {"w": (16, 1, 3, 3)}).rewritten == []
    # Without a measured kernel shape nothing is assumed.
    assert nchwc_graph(_conv_graph(16), {}).rewritten == []


def test_the_first_strided_depthwise_convolution_stays_plain():
    model = _conv_graph(16, strides=(2, 2), bias=False, second_strided=True)
    blocked = nchwc_graph(model, {"w": (16, 1, 3, 3)})
    assert blocked.rewritten == ["dw2"] and blocked.left_out == ["dw: the first strided one (largest input)"]
    feeds = _feeds(16, bias=False)
    np.testing.assert_allclose(_run(blocked.model, feeds), _run(model, feeds), atol=1e-5, rtol=1e-5)


def test_kernel_shapes_are_measured_by_running_the_graph():
    """Only kernels computed in the graph count; a constant kernel is ONNX Runtime's own business."""
    w_value = np.random.default_rng(1).standard_normal((24, 1, 3, 3), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["w0"], value=onnx.numpy_helper.from_array(w_value)),
         helper.make_node("Relu", ["w0"], ["w"]),
         helper.make_node("Conv", ["x", "w"], ["y"], name="dw", group=24, kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         helper.make_node("Conv", ["y", "w0"], ["z"], name="constant", group=24, kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 24, 20, 30])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    computed = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = _feeds(24)["x"]
    shapes = runtime_kernel_shapes(computed, x)
    assert shapes == {"w": (24, 1, 3, 3)}
    blocked = nchwc_graph(computed, shapes)
    assert blocked.rewritten == ["dw"]
    np.testing.assert_allclose(_run(blocked.model, {"x": x}), _run(computed, {"x": x}), atol=1e-4, rtol=1e-5)


@pytest.fixture(scope="module")
def dymn04_bundle(fixtures_dir, tmp_path_factory):
    weights = fixtures_dir / "dymn04_reference_weights.pt"
    probe = np.load(fixtures_dir / "dymn04_reference.npz")["input"]
    bundle = export_bundle(weights, tmp_path_factory.mktemp("nchwc") / "dymn04", include_checkpoint=False, probe=probe,
                           strategy="hybrid", fused=False)
    return bundle, probe, weights


def test_export_writes_the_blocked_form_beside_the_portable_model(dymn04_bundle):
    bundle, probe, weights = dymn04_bundle
    record = bundle.manifest["nchwc"]
    assert record["included"] and record["file"] == NCHWC_FILE and bundle.file("onnx_nchwc") == bundle.path / NCHWC_FILE
    assert record["max_abs_logit_diff"] < 1e-4 and record["rewritten"] > 0 and len(record["left_out"]) == 1
    # It shares model.onnx.data: the bundle's one copy of the weights.
    graph = onnx.load(str(bundle.path / NCHWC_FILE), load_external_data=False).graph
    locations = {e.value for t in graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"model.onnx.data"}
    assert sum(n.domain == NCHWC_DOMAIN and n.op_type == "Conv" for n in graph.node) == record["rewritten"]
    # The portable model.onnx keeps standard operators only (lint checks it for every target).
    assert all(n.domain in ("", "ai.onnx") for n in onnx.load(str(bundle.require("onnx")), load_external_data=False).graph.node)


def test_the_runtime_runs_the_blocked_form_on_cpu_and_the_portable_one_on_request(dymn04_bundle, monkeypatch):
    bundle, probe, weights = dymn04_bundle
    with torch.no_grad():
        expected = load_checkpoint(weights).model(torch.from_numpy(probe[:1]))[0].numpy()
    blocked = create_backend("onnxruntime", bundle, threads=1)
    assert blocked.model_path.name == NCHWC_FILE
    monkeypatch.setenv(NCHWC_ENV, "0")
    portable = create_backend("onnxruntime", bundle, threads=1)
    assert portable.model_path.name == "model.onnx"
    for backend in (blocked, portable):
        assert np.abs(backend.infer(probe[:1]) - expected).max() < 1e-4


def _copy_with_blocked_file(bundle, model, tmp_path):
    """A copy of ``bundle`` whose model.nchwc.onnx is ``model`` (weights still in model.onnx.data)."""
    path = tmp_path / NCHWC_FILE
    onnx.save(model, str(path))
    files = {name: (bundle.path / name, entry["role"]) for name, entry in bundle.manifest["files"].items() if name != NCHWC_FILE}
    files[NCHWC_FILE] = (path, "onnx_nchwc")
    return write_bundle(tmp_path / "copy", files, derived_metadata(bundle.manifest) | {"nchwc": bundle.manifest["nchwc"]},
                        labels=bundle.labels)


def test_a_blocked_file_this_onnxruntime_cannot_load_falls_back_to_model_onnx(dymn04_bundle, tmp_path, caplog):
    """As on a CPU whose ONNX Runtime build has no NCHWc kernels: the portable model runs, and the log says why."""
    bundle, probe, _ = dymn04_bundle
    model = onnx.load(str(bundle.path / NCHWC_FILE), load_external_data=False)
    next(n for n in model.graph.node if n.domain == NCHWC_DOMAIN).op_type = "NoSuchKernel"
    copy = _copy_with_blocked_file(bundle, model, tmp_path)
    with caplog.at_level(logging.INFO, logger="dymn_edge.runtime.backends.onnxruntime"):
        backend = create_backend("onnxruntime", copy, threads=1)
    assert backend.model_path.name == "model.onnx"
    assert f"running model.onnx instead of {NCHWC_FILE}" in caplog.text and "NoSuchKernel" in caplog.text
    reference = create_backend("onnxruntime", bundle, threads=1)
    np.testing.assert_allclose(backend.infer(probe[:1]), reference.infer(probe[:1]), atol=1e-5)


def test_a_blocked_file_that_loads_but_fails_at_its_first_run_falls_back_to_model_onnx(dymn04_bundle, tmp_path, caplog):
    """ONNX Runtime checks ReorderOutput's channels only when it runs: files that cut fewer channels
    than one block loaded on AVX2 and failed at the first window. The runtime runs the blocked
    graph once before choosing it."""
    bundle, probe, _ = dymn04_bundle
    model = onnx.load(str(bundle.path / NCHWC_FILE), load_external_data=False)
    reorder = next(n for n in model.graph.node if n.op_type == "ReorderOutput")
    reorder.attribute[0].i = 100_000  # more channels than the blocked tensor has: refused at run time on every CPU
    copy = _copy_with_blocked_file(bundle, model, tmp_path)
    with caplog.at_level(logging.INFO, logger="dymn_edge.runtime.backends.onnxruntime"):
        backend = create_backend("onnxruntime", copy, threads=1)
    assert backend.model_path.name == "model.onnx"
    assert f"running model.onnx instead of {NCHWC_FILE}" in caplog.text and "Input channels must match" in caplog.text
    np.testing.assert_allclose(backend.infer(probe[:1]), create_backend("onnxruntime", bundle, threads=1).infer(probe[:1]), atol=1e-5)


_AVX2_CHILD = """
import sys, numpy as np
from numpy._core._multiarray_umath import __cpu_features__ as cpu
from dymn_edge.runtime.backends import create_backend
from dymn_edge.runtime.bundle import load_bundle
assert cpu["AVX2"] and not cpu["AVX512F"], "not an AVX2-only CPU"
bundle = load_bundle(sys.argv[1])
x = np.load(sys.argv[2])
blocked = create_backend("onnxruntime", bundle, threads=1)
import os; os.environ["DYMN_EDGE_NCHWC"] = "0"
portable = create_backend("onnxruntime", bundle, threads=1)
print(blocked.model_path.name, float(np.abs(blocked.infer(x) - portable.infer(x)).max()))
"""


@pytest.mark.slow
def test_the_blocked_graph_runs_on_an_avx2_cpu(tmp_path):
    """AVX2's NCHWc block is 8 floats, AVX-512's 16. The embedded dymn04_edge's model.nchwc.onnx runs
    under qemu emulating a Haswell CPU (AVX2, no AVX-512), and agrees with its model.onnx there."""
    if not shutil.which("qemu-x86_64"):
        why = "needs qemu-x86_64 (apt-get install -y qemu-user)"
        if os.environ.get("DYMN_REQUIRE_AARCH64") == "1":  # CI installs qemu-user for the aarch64 tests too
            pytest.fail(why)
        pytest.skip(why)
    np.save(tmp_path / "x.npy", log_mel(load_audio(demo_clip_path()))[None, None].astype(np.float32))
    proc = subprocess.run(["qemu-x86_64", "-cpu", "Haswell", sys.executable, "-c", _AVX2_CHILD, str(embedded_bundle_path("dymn04_edge")),
                           str(tmp_path / "x.npy")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    name, diff = proc.stdout.split()
    assert name == NCHWC_FILE and float(diff) < 1e-4, proc.stdout


def test_bundles_that_misstate_the_blocked_file_are_refused(dymn04_bundle, tmp_path):
    bundle, _, _ = dymn04_bundle
    missing = tmp_path / "missing"
    shutil.copytree(bundle.path, missing)
    manifest = json.loads((missing / "manifest.json").read_text())
    del manifest["files"][NCHWC_FILE]
    (missing / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="'nchwc' says 'model.nchwc.onnx' is included, but no file has role 'onnx_nchwc'"):
        load_bundle(missing)
    alone = tmp_path / "alone"
    shutil.copytree(bundle.path, alone)
    manifest = json.loads((alone / "manifest.json").read_text())
    del manifest["files"]["model.onnx"]
    (alone / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="an 'onnx_nchwc' file needs the portable 'onnx' model beside it"):
        load_bundle(alone)
    # Bundles made from this one (INT8, IR, engine) run other graphs: the record stays behind.
    assert "nchwc" not in derived_metadata(bundle.manifest)


def test_strategies_without_run_time_depthwise_kernels_record_why(fixtures_dir, tmp_path):
    weights = fixtures_dir / "dymn04_reference_weights.pt"
    probe = np.load(fixtures_dir / "dymn04_reference.npz")["input"]
    bundle = export_bundle(weights, tmp_path / "expanded", include_checkpoint=False, probe=probe, strategy="expanded",
                           fused=False)
    assert bundle.manifest["nchwc"] == {"included": False, "reason": "no depthwise convolution with a float kernel computed at run time"}
    assert bundle.file("onnx_nchwc") is None
    assert create_backend("onnxruntime", bundle, threads=1).model_path.name == "model.onnx"


def test_a_bundle_exported_before_it_existed_gets_the_blocked_form_added(dymn04_bundle, tmp_path):
    bundle, probe, weights = dymn04_bundle
    older = tmp_path / "older"
    shutil.copytree(bundle.path, older)
    manifest = json.loads((older / "manifest.json").read_text())
    del manifest["files"][NCHWC_FILE], manifest["nchwc"]
    (older / NCHWC_FILE).unlink()
    (older / "manifest.json").write_text(json.dumps(manifest))
    assert create_backend("onnxruntime", load_bundle(older), threads=1).model_path.name == "model.onnx"
    onnx_bytes = (older / "model.onnx").read_bytes()
    added = add_nchwc_graph(older, load_checkpoint(weights).model, probes=[probe[:1]])
    assert added.manifest["nchwc"]["included"] and added.manifest["nchwc"]["max_abs_logit_diff"] < 1e-4
    assert added.manifest["nchwc"]["rewritten"] == bundle.manifest["nchwc"]["rewritten"]
    assert (older / "model.onnx").read_bytes() == onnx_bytes
    assert create_backend("onnxruntime", added, threads=1).model_path.name == NCHWC_FILE
    # Adding the fused weights afterwards keeps the record of the blocked graph (and the reverse, above).
    both = add_fused_weights(older, load_checkpoint(weights).model, probes=[probe[:1]])
    assert both.manifest["nchwc"] == added.manifest["nchwc"] and both.file("onnx_nchwc") and both.file("fused_weights")
    # The embedded mn04_as predates external data: its model.onnx holds the weights, which the
    # blocked graph could only share by copying them.
    inline = shutil.copytree(embedded_bundle_path("mn04_as"), tmp_path / "inline")
    with pytest.raises(ExportError, match="holds its weights inline; export it again"):
        add_nchwc_graph(inline)


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "dymn_edge", *map(str, args)], capture_output=True, text=True, timeout=600, cwd=cwd)


def test_export_refresh_brings_an_older_bundle_up_to_date(mn04_checkpoint, tmp_path):
    """`dymn-edge export refresh`: a DyMN bundle from before model.nchwc.onnx and model.fused.npz
    (the embedded dymn04_edge without them and without its checkpoint) gains the blocked graph,
    checked against its own model.onnx; model.fused.npz needs the checkpoint; a file of the first
    format is rewritten; a checkpoint of another family is refused; model.onnx never changes."""
    embedded = embedded_bundle_path("dymn04_edge")
    weights = embedded / "model.pt"
    older = shutil.copytree(embedded, tmp_path / "older")
    manifest = json.loads((older / "manifest.json").read_text())
    for name in (NCHWC_FILE, "model.fused.npz", "model.pt"):
        del manifest["files"][name]
        (older / name).unlink()
    del manifest["nchwc"], manifest["fused"]
    (older / "manifest.json").write_text(json.dumps(manifest))
    onnx_bytes = (older / "model.onnx").read_bytes()
    assert load_bundle(older).file("checkpoint") is None and load_bundle(older).file("fused_weights") is None

    proc = _cli("export", "refresh", older, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"added {NCHWC_FILE} (" in proc.stdout and "vs model.onnx" in proc.stdout, proc.stdout
    assert "left out model.fused.npz: it is made from the PyTorch model" in proc.stdout
    refreshed = load_bundle(older)
    record = refreshed.manifest["nchwc"]
    assert record["included"] and record["format"] == NCHWC_FORMAT and record["reference"] == "model.onnx"
    assert record["max_abs_logit_diff"] < 1e-4 and create_backend("onnxruntime", refreshed, threads=1).model_path.name == NCHWC_FILE

    proc = _cli("export", "refresh", older, "--checkpoint", weights, cwd=tmp_path)
    assert proc.returncode == 0 and "1 change(s)" in proc.stdout and "added model.fused.npz (max |logit diff| vs PyTorch" in proc.stdout, proc
    assert load_bundle(older).file("fused_weights") is not None
    proc = _cli("export", "refresh", older, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == f"{older}: up to date", proc.stdout

    manifest = json.loads((older / "manifest.json").read_text())
    del manifest["nchwc"]["format"]  # as the first format's files were recorded
    (older / "manifest.json").write_text(json.dumps(manifest))
    proc = _cli("export", "refresh", older, "--checkpoint", weights, cwd=tmp_path)
    assert proc.returncode == 0 and f"rewrote {NCHWC_FILE}" in proc.stdout and "vs pytorch" in proc.stdout, proc.stdout
    assert load_bundle(older).manifest["nchwc"]["format"] == NCHWC_FORMAT

    proc = _cli("export", "refresh", older, "--checkpoint", mn04_checkpoint, cwd=tmp_path)
    assert proc.returncode == 1 and "a mn checkpoint, but" in proc.stderr and "is a dymn bundle" in proc.stderr, proc.stderr
    assert (older / "model.onnx").read_bytes() == onnx_bytes


def test_a_dymn_bundle_cached_before_it_existed_gets_it_on_the_next_run(tmp_path, monkeypatch, caplog):
    """`tag --model some.pt --backend onnxruntime` exports once into the cache; an export from an
    older dymn-edge gains model.nchwc.onnx the next time it is used, and only once. So does one whose
    file is of the first format (padding cut by ReorderOutput, which fails on AVX2)."""
    from dymn_edge.loader import bundle_for_checkpoint
    from dymn_edge.runtime.resolve import resolve_model

    monkeypatch.setenv("DYMN_EDGE_CACHE", str(tmp_path / "cache"))
    source = resolve_model(str(embedded_bundle_path("dymn04_edge") / "model.pt"))
    cached = bundle_for_checkpoint(source)
    assert cached.manifest["nchwc"]["included"]
    manifest = json.loads((cached.path / "manifest.json").read_text())
    del manifest["files"][NCHWC_FILE], manifest["nchwc"]
    (cached.path / NCHWC_FILE).unlink()
    (cached.path / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING):
        again = bundle_for_checkpoint(source)
    assert "adding model.nchwc.onnx" in caplog.text
    assert again.path == cached.path and again.manifest["nchwc"]["included"] and (again.path / NCHWC_FILE).is_file()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert bundle_for_checkpoint(source).manifest["nchwc"] == again.manifest["nchwc"]
    assert "adding" not in caplog.text
    assert again.manifest["nchwc"]["format"] == NCHWC_FORMAT == 2
    manifest = json.loads((cached.path / "manifest.json").read_text())
    del manifest["nchwc"]["format"]
    (cached.path / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING):
        assert bundle_for_checkpoint(source).manifest["nchwc"]["format"] == NCHWC_FORMAT
    assert "adding model.nchwc.onnx" in caplog.text
