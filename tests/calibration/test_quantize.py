"""INT8 bundles for each backend, on the real mn04_as and real audio; TensorRT artefacts checked without TensorRT."""

from __future__ import annotations

import logging
import struct

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dymn_edge.calibration.calibrate import DEFAULT_METHODS, DEFAULT_SCOPES, calibrate_bundle
from dymn_edge.calibration.dataset import build_feature_set
from dymn_edge.runtime.tensorrt_int8 import cache_coverage, check_qdq, read_calibration_cache, write_calibration_cache
from dymn_edge.calibration.validate import fidelity, run_model
from dymn_edge.runtime.backends import create_backend
from dymn_edge.runtime.backends.onnxruntime import NCHWC_ENV
from dymn_edge.runtime.bundle import load_bundle
from dymn_edge.runtime.errors import BundleError, CalibrationError
from dymn_edge.runtime.registry import embedded_bundle_path


@pytest.fixture(scope="module")
def int8_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("int8")


@pytest.fixture(scope="module")
def esc50_validation(shared):
    """Windows from ESC-50 clips, disjoint from the pool audio the models are calibrated on."""
    return build_feature_set(shared / "data" / "esc50" / "labels.csv", window_s=10.0, samples=48, progress=False)


@pytest.fixture(scope="module")
def reference(esc50_validation):
    return run_model(embedded_bundle_path(), esc50_validation, timed_runs=0)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "tensorrt"])
def test_int8_bundle_per_backend(backend, shared, int8_dir, esc50_validation, reference):
    if backend == "openvino":
        pytest.importorskip("nncf", reason='NNCF is not installed (pip install "dymn-edge[calibrate]")')
    method = DEFAULT_METHODS[backend]
    out = calibrate_bundle(embedded_bundle_path(), shared / "data" / "pool", int8_dir / backend, backend=backend, samples=32, progress=False)
    assert out.precision == "int8"
    q = out.manifest["quantization"]
    assert q["backend"] == backend and q["windows"] == 32 and q["method"] == method and q["files"] == 32
    assert q["scope"] == DEFAULT_SCOPES[backend]
    candidate = run_model(out, esc50_validation, timed_runs=0)
    fid = fidelity(reference, candidate)
    # Real INT8, real audio: close to FP32 but not equal (an unquantized copy would give 0 error).
    assert 0.7 <= fid["top5_agreement"] < 1.0 and 0 < fid["max_logit_error"] < 15, fid
    if backend == "openvino":
        assert out.file("openvino_xml") and out.file("onnx") is None and candidate.backend == "openvino"
        return
    model = onnx.load(str(out.require("onnx")))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    weight_scales = [numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith("_scale")]
    assert any(s.size > 1 for s in weight_scales)  # per-channel weights
    if backend == "tensorrt":
        assert check_qdq(out.require("onnx")) == []
        header, scales = read_calibration_cache(out.file("calibration_cache"))
        assert header == "TRT-8502-EntropyCalibration2"
        assert cache_coverage(out.file("onnx_fp32"), scales) == []
        assert out.manifest["lint"]["tensorrt-10"]["passed"] and out.manifest["lint"]["tensorrt-8.5"]["passed"]
    else:
        assert check_qdq(out.require("onnx"))  # ONNX Runtime's own flavour quantizes biases to int32: not for TensorRT


def test_default_percentile_calibration_beats_minmax_for_onnxruntime(shared, int8_dir):
    """Why percentile is ONNX Runtime's default: clipping rare activation outliers keeps more of
    mn04_as's top 5 on all 300 held-out ESC-50 clips than the full min/max range does (0.885
    against 0.857 here; a 48-clip subset is too small to rank them)."""
    esc50 = build_feature_set(shared / "data" / "esc50" / "labels.csv", window_s=10.0, progress=False)
    reference = run_model(embedded_bundle_path(), esc50, timed_runs=0)
    agreement = {}
    for method in ("minmax", "percentile"):
        out = calibrate_bundle(embedded_bundle_path(), shared / "data" / "pool", int8_dir / f"ort-{method}", method=method,
                               scope="all", samples=64, progress=False)
        agreement[method] = fidelity(reference, run_model(out, esc50, timed_runs=0))["top5_agreement"]
    assert agreement["percentile"] >= agreement["minmax"] + 0.015, agreement


@pytest.fixture(scope="module")
def keep_stem_and_classifier(shared, int8_dir):
    return calibrate_bundle(embedded_bundle_path(), shared / "data" / "pool", int8_dir / "keep", samples=16,
                            keep_fp=["stem", "classifier"], scope="all", progress=False)


def test_keep_fp_leaves_the_named_parts_in_float(shared, int8_dir, keep_stem_and_classifier):
    out = keep_stem_and_classifier
    model = onnx.load(str(out.require("onnx")))
    producers = {o: n.op_type for n in model.graph.node for o in n.output}

    def int8_weights(node) -> bool:  # in QDQ format an INT8 layer reads its weights through a DequantizeLinear
        return producers.get(node.input[1]) == "DequantizeLinear"

    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    stem = [n for n in convs if n.name.startswith("/features.0/")]
    head = [n for n in model.graph.node if n.op_type in ("Gemm", "MatMul") and n.name.startswith("/classifier/")]
    assert stem and head and not any(int8_weights(n) for n in stem + head)
    assert sum(int8_weights(n) for n in convs if n not in stem) > 30  # everything else is still INT8
    assert out.manifest["quantization"]["excluded_nodes"] > 0
    with pytest.raises(CalibrationError, match="--keep-fp nothing_like_this matches no node"):
        calibrate_bundle(embedded_bundle_path(), shared / "data" / "pool", int8_dir / "none", samples=16, keep_fp=["nothing_like_this"],
                         scope="all", progress=False)


def test_keep_fp_for_openvino_matches_op_types_and_refuses_an_empty_match(shared, tmp_path):
    """NNCF's ignored scope sees OpenVINO names only, so --keep-fp is resolved on the ONNX graph
    first: an op-type glob ("Add") keeps every Add in float, and a pattern that matches nothing fails."""
    pytest.importorskip("nncf", reason='NNCF is not installed (pip install "dymn-edge[calibrate]")')
    import openvino as ov

    pool = shared / "data" / "pool"
    source = load_bundle(embedded_bundle_path())
    adds = sum(n.op_type == "Add" for n in onnx.load(str(source.require("onnx")), load_external_data=False).graph.node)

    def fake_quantizes(bundle):
        return sum(op.get_type_name() == "FakeQuantize" for op in ov.Core().read_model(str(bundle.require("openvino_xml"))).get_ops())

    plain = calibrate_bundle(source, pool, tmp_path / "plain", backend="openvino", samples=16, scope="all", progress=False)
    kept = calibrate_bundle(source, pool, tmp_path / "kept", backend="openvino", samples=16, keep_fp=["Add"], scope="all", progress=False)
    assert adds > 5 and kept.manifest["quantization"]["excluded_nodes"] == adds
    assert fake_quantizes(kept) < fake_quantizes(plain)
    with pytest.raises(CalibrationError, match="--keep-fp nothing_like_this matches no node"):
        calibrate_bundle(source, pool, tmp_path / "none", backend="openvino", samples=16, keep_fp=["nothing_like_this"], progress=False)


def test_openvino_accuracy_control_keeps_the_validation_metric(shared, tmp_path):
    """NNCF's accuracy-controlled quantization on the pointwise scope, judged by top-5 agreement
    with FP32 on unlabelled held-out audio (the streaming recordings, disjoint from the pool): it
    returns layers to float until the drop is within --max-drop. Plain pointwise INT8 agreed 0.968
    on these windows, the controlled one 0.989."""
    pytest.importorskip("nncf", reason='NNCF is not installed (pip install "dymn-edge[calibrate]")')
    streaming = shared / "data" / "streaming"
    out = calibrate_bundle(embedded_bundle_path(), shared / "data" / "pool", tmp_path / "controlled", backend="openvino", samples=32,
                           accuracy_control=True, validation_audio=streaming, max_drop=0.01, progress=False)
    q = out.manifest["quantization"]
    validation = build_feature_set(streaming, window_s=10.0, min_samples=1, progress=False)
    assert q["accuracy_control"] == {"max_drop": 0.01, "validation_windows": len(validation)} and q["scope"] == "pointwise"
    fid = fidelity(run_model(embedded_bundle_path(), validation, timed_runs=0), run_model(out, validation, timed_runs=0))
    assert 0.98 <= fid["top5_agreement"] and fid["max_logit_error"] > 0, fid  # INT8, yet within the allowed drop


def test_strategy_warning_only_where_the_strategy_changes_what_is_quantized(shared, tmp_path, fixtures_dir, caplog):
    """A `matmul` DyMN bundle quantizes less accurately than `grouped` with every layer in INT8, so
    calibrating it with --scope all warns. In the pointwise scope both have the same static layers
    in INT8, so it does not."""
    pytest.importorskip("torch", reason="exporting a DyMN strategy needs torch")
    from dymn_edge.export.onnx import export_bundle

    fp32 = export_bundle(fixtures_dir / "dymn04_reference_weights.pt", tmp_path / "matmul", strategy="matmul", batch=1,
                         include_checkpoint=False, verify_parity=False, fused=False)
    warning = "exported with the matmul strategy, which quantizes less accurately than grouped"
    for scope, warns in (("pointwise", False), ("all", True)):
        caplog.clear()
        with caplog.at_level("WARNING", logger="dymn_edge.calibration.calibrate"):
            calibrate_bundle(fp32, shared / "data" / "pool", tmp_path / scope, samples=16, scope=scope, progress=False)
        assert (warning in caplog.text) == warns, (scope, caplog.text)


def test_dymn_batch_norm_scales_are_quantized_per_channel(shared, tmp_path, caplog):
    """DyMN's BatchNorms after run-time-weight convs stay in the graph; each channel's scale gets its own INT8 scale."""
    dymn = embedded_bundle_path().parent / "dymn04_edge"
    with caplog.at_level("WARNING"):
        out = calibrate_bundle(dymn, shared / "data" / "pool", tmp_path / "dymn", samples=16, scope="all", progress=False)
    assert "out-of-range" not in caplog.text
    model = onnx.load(str(out.require("onnx")))
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    norms = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert len(norms) > 10
    for norm in norms:
        dq = producers[norm.input[1]]
        assert dq.op_type == "DequantizeLinear" and inits[dq.input[1]].size == inits[dq.input[0]].size > 1, norm.name
    # Every kernel is quantized here, those computed at run time too, so there is no float depthwise
    # convolution for model.nchwc.onnx to move into ONNX Runtime's blocked kernels.
    assert out.manifest["nchwc"] == {"included": False, "reason": "no depthwise convolution with a float kernel computed at run time"}


def test_onnxruntime_int8_dymn_runs_its_float_depthwise_convolutions_blocked(shared, tmp_path, monkeypatch):
    """The pointwise scope leaves DyMN's run-time-kernel depthwise convolutions in float: the INT8
    bundle carries model.nchwc.onnx for them, checked against its own model.onnx."""
    out = calibrate_bundle(embedded_bundle_path("dymn04_edge"), shared / "data" / "pool", tmp_path / "dymn", samples=16, progress=False)
    record = out.manifest["nchwc"]
    assert record["included"] and record["reference"] == "model.onnx" and record["max_abs_logit_diff"] <= 1e-4
    assert record["rewritten"] == load_bundle(embedded_bundle_path("dymn04_edge")).manifest["nchwc"]["rewritten"]
    x = np.load(shared / "fixtures" / "efficientat" / "dymn04_reference.npz")["input"][:1]
    blocked = create_backend("onnxruntime", out, threads=1)
    monkeypatch.setenv(NCHWC_ENV, "0")
    portable = create_backend("onnxruntime", out, threads=1)
    assert (blocked.model_path.name, portable.model_path.name) == ("model.nchwc.onnx", "model.onnx")
    np.testing.assert_allclose(blocked.infer(x), portable.infer(x), atol=1e-4)


def test_pointwise_scope_keeps_the_distilled_dymn_within_the_agreement_target(shared, int8_dir):
    """The issue asks for top-5 agreement >= 0.95 with FP32 on real audio. On all 300 ESC-50 clips
    dymn04_edge on ONNX Runtime agreed 0.948 (32 pool windows) while its classifier was INT8, and
    0.982 with the classifier's Gemms in float."""
    every_clip = build_feature_set(shared / "data" / "esc50" / "labels.csv", window_s=10.0, progress=False)
    source = embedded_bundle_path("dymn04_edge")
    out = calibrate_bundle(source, shared / "data" / "pool", int8_dir / "dymn-pointwise", samples=32, progress=False)
    model = onnx.load(str(out.require("onnx")))
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    head = [n for n in model.graph.node if n.op_type == "Gemm" and n.name.startswith("/classifier/")]
    assert len(head) == 2 and not any(producers.get(n.input[1]) == "DequantizeLinear" for n in head)
    fid = fidelity(run_model(source, every_clip, timed_runs=0), run_model(out, every_clip, timed_runs=0))
    assert 0.95 <= fid["top5_agreement"] < 1.0, fid


def test_uint8_activations_for_onnxruntime(shared, int8_dir, esc50_validation, reference, monkeypatch, caplog):
    """U8S8: activations quantize to uint8 (ONNX Runtime's faster x86 kernels), weights stay int8 per
    channel. Opening such a bundle on an x86 CPU without VNNI warns that they can saturate there;
    with VNNI, and for int8 activations, it does not."""
    out = calibrate_bundle(embedded_bundle_path(), shared / "data" / "pool", int8_dir / "u8s8", activations="uint8", samples=32, scope="all",
                           progress=False)
    assert out.manifest["quantization"]["activations"] == "uint8"
    model = onnx.load(str(out.require("onnx")))
    inits = {t.name: t for t in model.graph.initializer}
    zero_point_types = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) == 3:
            zero_point_types.setdefault(inits[node.input[2]].data_type, 0)
            zero_point_types[inits[node.input[2]].data_type] += 1
    assert set(zero_point_types) == {TensorProto.UINT8}, zero_point_types  # every activation Q is uint8
    weights = [t for t in model.graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) == 4]
    assert len(weights) > 30
    fid = fidelity(reference, run_model(out, esc50_validation, timed_runs=0))
    assert 0.7 <= fid["top5_agreement"] < 1.0, fid
    from dymn_edge.runtime import machine

    monkeypatch.setattr(machine.platform, "machine", lambda: "x86_64")
    for flags, warned in (("fpu sse avx2 fma", True), ("avx2 avx512f avx512_vnni", False), ("avx2 avx_vnni", False)):
        monkeypatch.setattr(machine, "_cpuinfo", lambda flags=flags: {"flags": flags})
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="dymn_edge.runtime.backends"):
            create_backend("onnxruntime", out, threads=1)
        assert ("uint8 activations can saturate" in caplog.text) == warned, (flags, caplog.text)
        assert not warned or "--activations int8" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dymn_edge.runtime.backends"):
        monkeypatch.setattr(machine, "_cpuinfo", lambda: {"flags": "avx2 fma"})
        create_backend("onnxruntime", calibrate_bundle(embedded_bundle_path(), shared / "data" / "pool", int8_dir / "s8s8-on-avx2", samples=16,
                                                       progress=False), threads=1)
    assert "saturate" not in caplog.text


def test_bad_requests(shared, keep_stem_and_classifier, tmp_path):
    pool = shared / "data" / "pool"
    with pytest.raises(CalibrationError, match="unknown backend 'tflite'"):
        calibrate_bundle(embedded_bundle_path(), pool, tmp_path / "x", backend="tflite")
    with pytest.raises(CalibrationError, match="--accuracy-control is NNCF's: it needs --backend openvino"):
        calibrate_bundle(embedded_bundle_path(), pool, tmp_path / "x", accuracy_control=True)
    with pytest.raises(CalibrationError, match="--accuracy-control needs --validation-audio"):
        calibrate_bundle(embedded_bundle_path(), pool, tmp_path / "x", backend="openvino", accuracy_control=True)
    with pytest.raises(BundleError, match="calibration starts from an FP32 bundle; this one is int8"):
        calibrate_bundle(load_bundle(keep_stem_and_classifier.path), pool, tmp_path / "x")
    with pytest.raises(CalibrationError, match="uint8 activations are an ONNX Runtime option; tensorrt .*symmetric int8"):
        calibrate_bundle(embedded_bundle_path(), pool, tmp_path / "x", backend="tensorrt", activations="uint8")
    with pytest.raises(CalibrationError, match="uint8 activations are an ONNX Runtime option; openvino"):
        calibrate_bundle(embedded_bundle_path(), pool, tmp_path / "x", backend="openvino", activations="uint8")
    with pytest.raises(CalibrationError, match="unknown activation type 'fp8'"):
        calibrate_bundle(embedded_bundle_path(), pool, tmp_path / "x", activations="fp8")
    with pytest.raises(CalibrationError, match="calibration method 'entropy' is not available for OpenVINO"):
        calibrate_bundle(embedded_bundle_path(), pool, tmp_path / "x", backend="openvino", method="entropy", samples=16, progress=False)
    with pytest.raises(CalibrationError, match="unknown quantization scope 'depthwise'; expected one of pointwise, all"):
        calibrate_bundle(embedded_bundle_path(), pool, tmp_path / "x", scope="depthwise")
    for backend in ("onnxruntime", "openvino"):  # every layer of the scope kept in float: nothing left to quantize
        with pytest.raises(CalibrationError, match="has no layer to quantize in the pointwise scope .* outside --keep-fp.*--scope all"):
            calibrate_bundle(embedded_bundle_path(), pool, tmp_path / "x", backend=backend, keep_fp=["Conv", "Gemm"], samples=16, progress=False)
    assert not (tmp_path / "x").exists()


def test_quantize_qdq_refuses_bad_arguments_before_reading_the_model(tmp_path):
    from dymn_edge.calibration.dataset import FeatureSet
    from dymn_edge.calibration.ort_qdq import quantize_qdq

    missing, data = tmp_path / "no_such_model.onnx", FeatureSet([], [], None)
    with pytest.raises(CalibrationError, match="unknown QDQ flavour 'tflite'"):
        quantize_qdq(missing, tmp_path / "out.onnx", data, flavour="tflite")
    with pytest.raises(CalibrationError, match="activations 'uint8' are not available for the tensorrt flavour"):
        quantize_qdq(missing, tmp_path / "out.onnx", data, flavour="tensorrt", activations="uint8")
    with pytest.raises(CalibrationError, match="unknown quantization scope 'some'"):
        quantize_qdq(missing, tmp_path / "out.onnx", data, scope="some")


def test_pointwise_layers_are_the_wide_constant_matrix_products():
    """mn04_as: every 1x1 convolution and Gemm at least 32 channels wide on both sides, nothing else
    (no stem, no depthwise convolution, no narrow early layer, no classifier Gemm); DyMN: none of its
    run-time-weight convolutions, kernel aggregations or classifier Gemms."""
    from dymn_edge.calibration.ort_qdq import POINTWISE_MIN_CHANNELS, kernel_aggregations, pointwise_layers, run_time_weight_nodes

    model = onnx.load(str(load_bundle(embedded_bundle_path()).require("onnx")))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    chosen = set(pointwise_layers(model))
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            assert node.name not in chosen
            continue
        w = weights[node.input[1]]
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        pointwise = (node.op_type == "Gemm" and not node.name.startswith("/classifier/")) or (group == 1 and w.shape[2:] == (1, 1))
        assert (node.name in chosen) == (pointwise and min(w.shape[:2]) >= POINTWISE_MIN_CHANNELS), node.name
    assert len(chosen) == 28 and not any(n.startswith(("/features.0/", "/features.1/", "/features.2/")) for n in chosen)
    dymn = load_bundle(embedded_bundle_path("dymn04_edge")).require("onnx")
    dynamic = set(run_time_weight_nodes(dymn)) | set(kernel_aggregations(dymn))
    chosen = pointwise_layers(dymn)
    assert chosen and not dynamic & set(chosen) and len(dynamic) > 40
    assert not any(n.startswith("/classifier/") for n in chosen) and "/out_c/out_c.0/Conv" in chosen


def test_pointwise_scope_quantizes_only_its_layers(shared, int8_dir, esc50_validation, reference):
    """The default scope on ONNX Runtime: the pointwise layers read INT8 weights through a
    DequantizeLinear, every other Conv (stem, depthwise) keeps float weights, and the model agrees
    with FP32 better than the whole model quantized (0.948 against 0.885 on all 300 ESC-50 clips)."""
    from dymn_edge.calibration.ort_qdq import pointwise_layers

    source = load_bundle(embedded_bundle_path())
    out = calibrate_bundle(source, shared / "data" / "pool", int8_dir / "pointwise", samples=32, progress=False)
    q = out.manifest["quantization"]
    assert q["scope"] == "pointwise" and q["scope_layers"] == 28
    model = onnx.load(str(out.require("onnx")))
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    int8_weights = {n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm") and producers.get(n.input[1]) == "DequantizeLinear"}
    assert int8_weights == set(pointwise_layers(source.require("onnx")))
    assert sum(n.op_type == "Conv" for n in model.graph.node) - len(int8_weights) > 15  # stem and depthwise convs in float
    whole = calibrate_bundle(source, shared / "data" / "pool", int8_dir / "whole", samples=32, scope="all", progress=False)
    pointwise_fid = fidelity(reference, run_model(out, esc50_validation, timed_runs=0))
    whole_fid = fidelity(reference, run_model(whole, esc50_validation, timed_runs=0))
    assert 0.9 <= pointwise_fid["top5_agreement"] < 1.0, pointwise_fid
    assert pointwise_fid["top5_agreement"] > whole_fid["top5_agreement"], (pointwise_fid, whole_fid)


def test_pointwise_scope_for_openvino_ignores_every_other_node(shared, tmp_path, esc50_validation, reference):
    """NNCF takes no list of nodes to quantize, so the pointwise scope puts every other node in its
    ignored scope: the INT8 IR has fewer FakeQuantize operations than the whole model's, and on the
    300 ESC-50 clips it agreed with FP32 0.972 (whole model 0.877)."""
    pytest.importorskip("nncf", reason='NNCF is not installed (pip install "dymn-edge[calibrate]")')
    import openvino as ov

    pool = shared / "data" / "pool"
    source = load_bundle(embedded_bundle_path())

    def fake_quantizes(bundle):
        return sum(op.get_type_name() == "FakeQuantize" for op in ov.Core().read_model(str(bundle.require("openvino_xml"))).get_ops())

    pointwise = calibrate_bundle(source, pool, tmp_path / "pointwise", backend="openvino", samples=16, progress=False)
    whole = calibrate_bundle(source, pool, tmp_path / "whole", backend="openvino", samples=16, scope="all", progress=False)
    q = pointwise.manifest["quantization"]
    assert q["scope"] == "pointwise" and q["scope_layers"] == 28
    # one on the weights and one on the input of each layer, where no neighbour shares it
    assert 28 <= fake_quantizes(pointwise) <= 56 < fake_quantizes(whole)
    fid = fidelity(reference, run_model(pointwise, esc50_validation, timed_runs=0))
    assert 0.9 <= fid["top5_agreement"] < 1.0, fid
    from dymn_edge.calibration.nncf_ov import quantize_openvino

    with pytest.raises(CalibrationError, match="the pointwise scope is resolved on an ONNX model; this is .xml file"):
        quantize_openvino(whole.require("openvino_xml"), tmp_path / "again.xml", build_feature_set(pool, samples=16, progress=False),
                          scope="pointwise")


def test_calibration_cache_round_trip(tmp_path):
    ranges = {"mel": (-2.1, 3.0), "/features.0/Conv_output_0": (-0.5, 0.25), "zero": (0.0, 0.0)}
    path = write_calibration_cache(ranges, tmp_path / "c.cache", method="minmax", tensorrt_version="10.3.0")
    lines = path.read_text().splitlines()
    assert lines[0] == "TRT-100300-MinMaxCalibration"
    assert lines[2] == "mel: " + struct.pack(">f", 3.0 / 127).hex()
    header, scales = read_calibration_cache(path)
    assert header == lines[0] and scales["mel"] == np.float32(3.0 / 127) and scales["zero"] == np.float32(1e-8)
    assert scales["/features.0/Conv_output_0"] == np.float32(0.5 / 127)
    (tmp_path / "bad.cache").write_text("not a cache\n")
    with pytest.raises(CalibrationError, match="not a TensorRT calibration cache"):
        read_calibration_cache(tmp_path / "bad.cache")
    (tmp_path / "bad2.cache").write_text("TRT-8502-EntropyCalibration2\nmel: zz\n")
    with pytest.raises(CalibrationError, match="bad2.cache:2: expected '<tensor>: <8 hex digits>'"):
        read_calibration_cache(tmp_path / "bad2.cache")
    with pytest.raises(CalibrationError, match="TensorRT version 'ten'"):
        write_calibration_cache(ranges, tmp_path / "x.cache", tensorrt_version="ten")


def _qdq_graph(zero_point, scale, axis=None, activation_per_channel=False):
    w = numpy_helper.from_array(np.ones((4, 2, 3, 3), np.int8), "w_q")
    ws = numpy_helper.from_array(np.full(4, 0.01, np.float32), "w_scale")
    wz = numpy_helper.from_array(np.zeros(4, np.int8), "w_zero")
    a_s = numpy_helper.from_array(np.full(2 if activation_per_channel else (), scale, np.float32), "a_scale")
    a_z = numpy_helper.from_array(np.full(2 if activation_per_channel else (), zero_point, np.int8), "a_zero")
    dq_w = helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], name="dq_w", **({"axis": axis} if axis is not None else {}))
    nodes = [helper.make_node("QuantizeLinear", ["x", "a_scale", "a_zero"], ["xq"], name="q_x", **({"axis": 1} if activation_per_channel else {})),
             helper.make_node("DequantizeLinear", ["xq", "a_scale", "a_zero"], ["xd"], name="dq_x", **({"axis": 1} if activation_per_channel else {})),
             dq_w, helper.make_node("Conv", ["xd", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[w, ws, wz, a_s, a_z])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_qdq_rules_catch_what_tensorrt_refuses(tmp_path):
    def problems(model):
        path = tmp_path / "m.onnx"
        onnx.save(model, str(path))
        return check_qdq(path)

    assert problems(_qdq_graph(0, 0.02, axis=0)) == []
    assert any("zero point must be int8 0" in p for p in problems(_qdq_graph(3, 0.02, axis=0)))
    assert any("scales must be positive" in p for p in problems(_qdq_graph(0, -0.02, axis=0)))
    assert any("Conv weights must be quantized along axis 0" in p for p in problems(_qdq_graph(0, 0.02, axis=1)))
    assert any("per-channel scales on an activation" in p for p in problems(_qdq_graph(0, 0.02, axis=0, activation_per_channel=True)))
    plain = onnx.load(str(embedded_bundle_path() / "model.onnx"))
    assert problems(plain) == ["no QuantizeLinear/DequantizeLinear nodes: not an explicitly quantized model"]


def _near_constant_model(path, external: bool = False) -> None:
    """x -> 1 + 1e-7 x (a few float32 ulps around 1: no 2048-bin histogram fits) -> 1x1 Conv."""
    weight = numpy_helper.from_array(np.full((4, 1, 1, 1), 0.5, np.float32), "w")
    nodes = [helper.make_node("Mul", ["mel", "tiny"], ["scaled"]), helper.make_node("Add", ["scaled", "one"], ["flat"]),
             helper.make_node("Conv", ["flat", "w"], ["logits"], name="/features.1/Conv")]
    graph = helper.make_graph(nodes, "near_constant", [helper.make_tensor_value_info("mel", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [weight, numpy_helper.from_array(np.float32(1e-7), "tiny"), numpy_helper.from_array(np.float32(1), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path), save_as_external_data=external, location=path.name + ".data", size_threshold=0)


def test_histogram_failure_on_a_nearly_constant_tensor_falls_back_to_minmax_only_when_defaulted(tmp_path, rng):
    from dymn_edge.calibration.dataset import FeatureSet
    from dymn_edge.calibration.ort_qdq import quantize_qdq

    _near_constant_model(tmp_path / "m.onnx")
    data = FeatureSet([rng.standard_normal((1, 1, 8, 8)).astype(np.float32) for _ in range(16)], [("x", float(i)) for i in range(16)], None)
    with pytest.raises(CalibrationError, match=r"percentile calibration of .*m.onnx failed on a nearly constant tensor.*use --method minmax"):
        quantize_qdq(tmp_path / "m.onnx", tmp_path / "q.onnx", data, method="percentile")
    info = quantize_qdq(tmp_path / "m.onnx", tmp_path / "q.onnx", data, method="percentile", fallback_to_minmax=True)
    assert info["method"] == "minmax" and info["fallback_from"] == "percentile"
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}


def test_pre_processing_reads_external_weights(tmp_path):
    """ONNX Runtime's pre-processor loses a model's external weights file; ours inlines them first."""
    from dymn_edge.calibration.ort_qdq import _preprocess

    _near_constant_model(tmp_path / "m.onnx", external=True)
    assert (tmp_path / "m.onnx.data").exists()
    work = tmp_path / "work"
    work.mkdir()
    out = _preprocess(tmp_path / "m.onnx", work)
    assert out == work / "preprocessed.onnx"
    assert numpy_helper.to_array(next(t for t in onnx.load(str(out)).graph.initializer if t.name == "w")).tolist() == [[[[0.5]]]] * 4


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorrt", "openvino"])
def test_trained_dymn_keeps_its_kernels_in_float_and_survives_int8(backend, shared, int8_dir, esc50_validation):
    """dymn04_edge collapsed (top-5 hit 0.000) under TensorRT Q/DQ and NNCF while its kernel
    aggregations (attention @ bank) were quantized; they now stay in float."""
    if backend == "openvino":
        pytest.importorskip("nncf", reason='NNCF is not installed (pip install "dymn-edge[calibrate]")')
    from dymn_edge.calibration.ort_qdq import kernel_aggregations, run_time_weight_nodes

    source = embedded_bundle_path("dymn04_edge")
    fp32_onnx = load_bundle(source).require("onnx")
    aggregations = kernel_aggregations(fp32_onnx)
    assert len(aggregations) == 3 * 15 - 1  # exp, depth, proj per block; block 0 has no expansion
    out = calibrate_bundle(source, shared / "data" / "pool", int8_dir / f"dymn04_edge-{backend}", backend=backend, samples=32, scope="all",
                           progress=False)
    reference = run_model(source, esc50_validation, timed_runs=0)
    fid = fidelity(reference, run_model(out, esc50_validation, backend="onnxruntime" if backend == "tensorrt" else backend, timed_runs=0))
    assert fid["top5_agreement"] > 0.6, fid  # 0.11 (TensorRT) and 0.17 (NNCF) before
    if backend == "tensorrt":
        model = onnx.load(str(out.require("onnx")))
        producers = {o: n.op_type for n in model.graph.node for o in n.output}
        float_nodes = set(aggregations) | set(run_time_weight_nodes(fp32_onnx))
        for node in model.graph.node:
            if node.name in float_nodes:
                assert not any(producers.get(i) == "DequantizeLinear" for i in node.input), node.name
        assert check_qdq(out.require("onnx")) == []


def test_hybrid_dy_relu_norms_with_run_time_parameters_stay_in_float(shared, tmp_path, caplog):
    """`hybrid` writes each Dy-ReLU piece as a BatchNormalization whose scale and bias are computed per
    input. ONNX Runtime's quantizer took them for activations (one scale for every channel) and
    logged "Expected bias ... to be an initializer" for each; they now stay in float, silently."""
    pytest.importorskip("torch", reason="exporting the hybrid strategy needs torch")
    from dymn_edge.calibration.ort_qdq import run_time_affine_norms
    from dymn_edge.export.onnx import export_bundle
    from dymn_edge.train.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(load_bundle(embedded_bundle_path("dymn04_edge")).require("checkpoint"))
    fp32 = export_bundle(checkpoint, tmp_path / "hybrid", strategy="hybrid", batch=1, include_checkpoint=False, verify_parity=False,
                         fused=False)
    float_nodes = run_time_affine_norms(fp32.require("onnx"))
    graph = onnx.load(str(fp32.require("onnx")), load_external_data=False).graph
    norms = [n.name for n in graph.node if n.name in float_nodes and n.op_type == "BatchNormalization"]
    assert len(norms) == 2 * 15  # two Dy-ReLU pieces per block
    assert sum(n.op_type in ("MatMul", "Gemm") for n in graph.node if n.name in float_nodes) == 15  # one coefficient net per block
    with caplog.at_level("WARNING"):
        out = calibrate_bundle(fp32, shared / "data" / "pool", tmp_path / "int8", samples=16, scope="all", progress=False)
    assert "to be an initializer" not in caplog.text
    model = onnx.load(str(out.require("onnx")), load_external_data=False)
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    # The BatchNorms' data input is the depthwise output, an activation; their parameters, and every
    # input of the nodes between them and the coefficient net's MatMul, stay float.
    float_inputs = {n.name: n.input[1:3] if n.op_type == "BatchNormalization" else n.input
                    for n in model.graph.node if n.name in float_nodes and n.op_type not in ("MatMul", "Gemm")}
    quantized = [name for name, inputs in float_inputs.items() if any(producers.get(i) == "DequantizeLinear" for i in inputs)]
    assert quantized == []
    assert sum(n.name in norms for n in model.graph.node) == len(norms)
