"""ONNX export: numerical parity with PyTorch through ONNX Runtime, for both families."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from dymn_edge.export.onnx import export_bundle, export_onnx, probe_features
from dymn_edge.export.strategies import STRATEGIES
from dymn_edge.runtime.bundle import load_bundle
from dymn_edge.runtime.errors import CalibrationError, ExportError
from dymn_edge.runtime.frontend import log_mel
from dymn_edge.runtime.registry import embedded_bundle_path
from dymn_edge.train.checkpoint import load_checkpoint


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_mn04_as_export_matches_pytorch_on_real_audio(mn04_checkpoint, fixtures_dir, tmp_path):
    loaded = load_checkpoint(mn04_checkpoint)
    bundle = export_bundle(loaded, tmp_path / "b", name="mn04_as")
    session = _session(bundle.require("onnx"))
    mel = np.load(fixtures_dir / "frontend_reference.npz")["metro_mel"]
    for frames in (1000, 437):
        x = mel[None, None, :, :frames]
        with torch.no_grad():
            expected, embedding = loaded.model(torch.from_numpy(x))
        got, got_embedding = session.run(None, {"mel": x})
        assert np.abs(got - expected.numpy()).max() < 1e-4
        assert np.abs(got_embedding - embedding.numpy()).max() < 1e-4
    batch = np.concatenate([mel[None, None]] * 3)  # dynamic batch for MobileNetV3
    assert session.run(["logits"], {"mel": batch})[0].shape == (3, 527)
    manifest = bundle.manifest
    assert manifest["export_strategy"] == "static" and manifest["inputs"][0]["shape"] == ["batch", 1, 128, "frames"]
    assert manifest["source"]["sha256"] == loaded.sha256 and manifest["parity"]["max_abs_logit_diff"] < 1e-4


def test_dymn_bundle_records_temperature_and_strategy(fixtures_dir, tmp_path):
    weights = fixtures_dir / "dymn04_reference_weights.pt"
    # The seeded weights are only stable on the input their BN statistics came from.
    with pytest.raises(ExportError, match="PyTorch itself gives extreme logits"):
        export_bundle(weights, tmp_path / "unstable")
    assert not (tmp_path / "unstable").exists()
    probe = np.load(fixtures_dir / "dymn04_reference.npz")["input"]
    bundle = export_bundle(weights, tmp_path / "dymn04", include_checkpoint=False, probe=probe, strategy="matmul")
    assert bundle.manifest["parity"]["max_abs_logit_diff"] < 1e-4
    assert bundle.export_strategy == "matmul" and bundle.manifest["temperature"] == 1.0
    assert bundle.file("checkpoint") is None and bundle.manifest["inputs"][0]["shape"][0] == 1
    # The shapes the manifest promises (TensorRT profiles) are shapes the model really runs.
    profile = bundle.manifest["shape_profiles"]["mel"]
    assert profile == {"min": [1, 1, 128, 1], "opt": [1, 1, 128, 1000], "max": [1, 1, 128, 6000]}
    session = _session(bundle.require("onnx"))
    for shape in profile.values():
        assert session.run(["logits"], {"mel": np.zeros(shape, np.float32)})[0].shape == (1, 527)


def test_embedded_bundle_is_the_export_of_the_official_checkpoint(mn04_checkpoint, fixtures_dir):
    """What ships equals what the official release computes, through the runtime's own frontend."""
    bundle = load_bundle(embedded_bundle_path())
    loaded = load_checkpoint(mn04_checkpoint)
    wave = np.load(fixtures_dir / "frontend_reference.npz")["metro_wave_32k"]
    x = log_mel(wave)[None, None]
    with torch.no_grad():
        expected = loaded.model(torch.from_numpy(x))[0].numpy()
    assert np.abs(_session(bundle.require("onnx")).run(["logits"], {"mel": x})[0] - expected).max() < 1e-4


def test_probe_features_are_the_demo_clip():
    x = probe_features(2.0)
    assert x.shape == (1, 1, 128, 200) and x.dtype == np.float32
    assert -2.0 < x.min() and x.max() < 3.0 and x.std() > 0.1


def test_bad_export_requests_are_refused(fixtures_dir, mn04_checkpoint, tmp_path):
    loaded = load_checkpoint(fixtures_dir / "dymn04_reference_weights.pt")
    with pytest.raises(ExportError, match="unknown export strategy 'fast'; expected one of grouped, matmul, expanded"):
        export_bundle(loaded, tmp_path / "a", strategy="fast")
    with pytest.raises(ExportError, match="grouped strategy folds the batch into conv groups"):
        export_onnx(loaded.model, tmp_path / "b.onnx", strategy="grouped", batch=None)
    with pytest.raises(ExportError, match="ONNX export at opset 25 failed: .*25"):
        export_onnx(load_checkpoint(mn04_checkpoint).model, tmp_path / "c.onnx", opset=25)
    with pytest.raises(ExportError, match="batch must be >= 1"):
        export_onnx(loaded.model, tmp_path / "d.onnx", batch=0)
    with pytest.raises(ExportError, match="window must be a positive"):
        export_bundle(loaded, tmp_path / "e", window_s=0)


def test_label_count_must_match(mn04_checkpoint, tmp_path):
    from dymn_edge.runtime.labels import LabelSet

    with pytest.raises(ExportError, match="10 labels given for a model with 527 classes"):
        export_bundle(mn04_checkpoint, tmp_path / "b", labels=LabelSet.placeholder(10))
    assert not (tmp_path / "b").exists()


def test_auto_times_onnxruntime_where_the_runtime_would_run_it_and_says_where(monkeypatch):
    """On a machine with onnxruntime-gpu, ONNX Runtime's strategies are timed on its CUDA provider,
    as tagging would run them there, and the record says so; where CUDA does not start, the CPU."""
    from fake_onnxruntime_gpu import CPU, CUDA, MODEL, install_gpu_wheel

    from dymn_edge.export.auto import measure_strategies
    from dymn_edge.runtime.backends import onnxruntime as ort_backend

    monkeypatch.setattr(ort_backend, "tensorrt_loadable", lambda: False)
    x = np.zeros((1, 1, 128, 1000), np.float32)
    for starts, device in (((CUDA,), CUDA), ((), CPU)):
        wheel = install_gpu_wheel(monkeypatch, starts=starts)
        timings, devices = measure_strategies({"a": MODEL, "b": MODEL}, x, backends=("onnxruntime",), rounds=1, runs_per_round=1)
        assert devices == {"onnxruntime": device} and set(timings["onnxruntime"]) == {"a", "b"}
        assert [p[0] if isinstance(p, tuple) else p for p in wheel.asked[0]] == [CUDA, CPU]


def test_auto_strategy_measures_every_backend_and_records_the_choice(fixtures_dir, tmp_path):
    from dymn_edge.runtime.tagging import Tagger

    weights = fixtures_dir / "dymn04_reference_weights.pt"
    probe = np.load(fixtures_dir / "dymn04_reference.npz")["input"]
    bundle = export_bundle(weights, tmp_path / "auto", include_checkpoint=False, probe=probe, strategy="auto")
    choice = bundle.manifest["strategy_choice"]
    backends = {"onnxruntime", "openvino"} if _has_openvino() else {"onnxruntime"}
    assert set(choice["timings_ms"]) == backends and set(choice["chosen"]) == backends
    assert choice["devices"] == {"onnxruntime": "CPUExecutionProvider", **({"openvino": "CPU"} if _has_openvino() else {})}
    for backend, timings in choice["timings_ms"].items():
        assert set(timings) == set(STRATEGIES) and all(ms > 0 for ms in timings.values())
        assert choice["chosen"][backend] == min(timings, key=timings.get)  # the fastest one, as measured
        assert bundle.strategy_for(backend) == choice["chosen"][backend]
    assert all(p < 1e-4 for p in choice["parity"].values())
    assert bundle.export_strategy == choice["chosen"]["onnxruntime"] and choice["machine"]["cores"] >= 1
    # ONNX Runtime was timed on the blocked form of each strategy that has run-time depthwise kernels,
    # which is what it runs from the bundle.
    assert choice["onnxruntime_nchwc"] == ["grouped", "hybrid", "matmul"]
    assert bundle.manifest["nchwc"]["included"] == (bundle.export_strategy != "expanded")
    # OpenVINO runs its own choice when it differs; both run the fixture to parity.
    has_own = choice["chosen"].get("openvino", bundle.export_strategy) != bundle.export_strategy
    assert (bundle.file("onnx_openvino") is not None) == has_own
    # INT8 starts from the strategy that quantizes best (grouped, available at batch 1), stored once.
    int8 = choice["int8"]
    assert int8["strategy"] == "grouped"
    stored = {bundle.export_strategy: "model.onnx"}
    if has_own:
        stored[choice["chosen"]["openvino"]] = "model.openvino.onnx"
    assert int8["file"] == stored.get("grouped", "model.int8.onnx") and (bundle.path / int8["file"]).is_file()
    assert (bundle.file("onnx_int8") is not None) == ("grouped" not in stored)
    for backend in ("onnxruntime", "openvino", "tensorrt"):
        assert bundle.int8_source(backend) == (bundle.path / int8["file"], "grouped")
    with torch.no_grad():
        expected = load_checkpoint(weights).model(torch.from_numpy(probe[2:3]))[0].numpy()
    for backend in backends:
        tagger = Tagger.from_bundle(bundle, backend, threads=1)
        assert np.abs(tagger.backend.infer(probe[2:3]) - expected).max() < 1e-4


def test_calibration_quantizes_the_strategy_auto_chose_for_int8(fixtures_dir, shared, tmp_path, monkeypatch, caplog):
    """Force an INT8 choice no FP32 model has (expanded is never the fastest): the bundle carries it
    as model.int8.onnx and calibration quantizes that graph (expanded's attention-weighted ReduceSum).
    Calibration, which reads the real preference, warns that expanded quantizes worse than grouped."""
    import onnx

    from dymn_edge.calibration.calibrate import calibrate_bundle
    from dymn_edge.export import onnx as onnx_export

    monkeypatch.setattr(onnx_export, "INT8_PREFERENCE", ("expanded",))
    weights = fixtures_dir / "dymn04_reference_weights.pt"
    probe = np.load(fixtures_dir / "dymn04_reference.npz")["input"]
    bundle = export_bundle(weights, tmp_path / "auto", include_checkpoint=False, probe=probe, strategy="auto")
    assert "expanded" not in set(bundle.manifest["strategy_choice"]["chosen"].values())
    assert bundle.manifest["strategy_choice"]["int8"]["file"] == "model.int8.onnx" and bundle.file("onnx_int8").exists()

    def reduce_sums(path):
        return sum(n.op_type == "ReduceSum" for n in onnx.load(str(path), load_external_data=False).graph.node)

    assert reduce_sums(bundle.require("onnx")) == 0 and reduce_sums(bundle.file("onnx_int8")) > 0
    with caplog.at_level("WARNING", logger="dymn_edge.calibration.calibrate"):
        out = calibrate_bundle(bundle, shared / "data" / "pool", tmp_path / "int8", samples=16, progress=False)
    assert "exported with the expanded strategy, which quantizes less accurately than grouped" in caplog.text
    assert reduce_sums(out.require("onnx")) == reduce_sums(bundle.file("onnx_int8"))
    assert out.export_strategy == "expanded" and out.manifest["quantization"]["export_strategy"] == "expanded"
    assert "strategy_choice" not in out.manifest  # the FP32 per-backend choice does not describe the INT8 model
    assert bundle.file("fused_weights") is not None and out.file("fused_weights") is None and "fused" not in out.manifest

    # Sensitivity ranks the parts of that same graph: record what it would quantize, then refuse.
    from dymn_edge.calibration import calibrate as calibrate_module
    from dymn_edge.calibration.dataset import build_feature_set

    quantized = []

    def refuse(source, dest, data, **kw):
        quantized.append(Path(source))
        raise CalibrationError("not needed here")

    monkeypatch.setattr(calibrate_module, "quantize_qdq", refuse)
    data = build_feature_set(shared / "data" / "pool", samples=16, progress=False)
    assert calibrate_module.sensitivity(bundle, data, data, progress=False) == []
    assert len(quantized) > 10 and set(quantized) == {bundle.file("onnx_int8")}


def test_an_opset_the_model_cannot_be_expressed_in(fixtures_dir, tmp_path):
    model = load_checkpoint(fixtures_dir / "dymn04_reference_weights.pt").model
    with pytest.raises(ExportError, match=r"ONNX export at opset 9 failed: .*Slice with dynamic inputs.*try a higher --opset"):
        export_onnx(model, tmp_path / "o9.onnx", strategy="matmul", opset=9)


def _has_openvino():
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("batch", [1, 3])
def test_mn04_as_parity_on_every_backend_at_batch_1_and_3(mn04_checkpoint, fixtures_dir, tmp_path, batch):
    """The real AudioSet model: ONNX Runtime and OpenVINO (FP32) within 1e-4 of PyTorch on real audio."""
    loaded = load_checkpoint(mn04_checkpoint)
    bundle = export_bundle(loaded, tmp_path / "b", batch=batch, include_checkpoint=False)
    mel = np.load(fixtures_dir / "frontend_reference.npz")["metro_mel"]
    demo = probe_features(10.0)[0, 0]
    rows = np.stack([mel, demo, mel[:, ::-1].copy()])[:, None]  # three different real inputs
    with torch.no_grad():
        expected = loaded.model(torch.from_numpy(rows))[0].numpy()
    runners = {"onnxruntime": lambda x: _session(bundle.require("onnx")).run(["logits"], {"mel": x})[0]}
    if _has_openvino():
        import openvino as ov

        compiled = ov.Core().compile_model(str(bundle.require("onnx")), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        runners["openvino"] = lambda x: np.asarray(compiled({0: x})[compiled.outputs[0]])
    for backend, run in runners.items():
        got = np.concatenate([run(rows[i : i + batch]) for i in range(0, 3, batch)])
        assert np.abs(got - expected).max() < 1e-4, backend
