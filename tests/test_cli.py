"""The dymn-edge CLI as a user runs it: real subprocesses, real audio, real files and a real HTTP server."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fileserver import FileServer

from dymn_edge.runtime.registry import demo_clip_path, embedded_bundle_path

DEMO = demo_clip_path()
MN04_SHA = "899a8c6217063f6941793102a2780b3dd788ab11fce468d9cf5f0577c453321c"


@pytest.fixture
def cli(tmp_path):
    """Run ``python -m dymn_edge ARGS`` with a private cache; returns the CompletedProcess."""
    env = dict(os.environ, DYMN_EDGE_CACHE=str(tmp_path / "cache"))
    env.pop("DYMN_EDGE_BASE_URL", None)

    def run(*args, timeout=300, **extra_env):
        return subprocess.run(
            [sys.executable, "-m", "dymn_edge", *map(str, args)],
            capture_output=True, text=True, timeout=timeout, cwd=tmp_path, env={**env, **extra_env},
        )

    run.cache = tmp_path / "cache"
    return run


def _json_lines(proc):
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def test_console_script_and_help():
    exe = Path(sys.executable).parent / "dymn-edge"
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for command in ("tag", "models", "fetch", "info"):
        assert command in proc.stdout
    version = subprocess.run([sys.executable, "-m", "dymn_edge", "--version"], capture_output=True, text=True, timeout=60)
    assert version.stdout.startswith("dymn-edge, version ")


def test_tag_json_on_the_embedded_model(cli):
    (result,) = _json_lines(cli("tag", "--json", DEMO))
    assert result["path"] == str(DEMO) and result["model"] == "mn04_as"
    tags = result["tags"]
    assert len(tags) == 5 and set(tags[0]) == {"index", "label", "score"}
    assert tags[0] == {"index": 136, "label": "Whale vocalization", "score": pytest.approx(0.833, abs=0.01)}
    assert [t["score"] for t in tags] == sorted((t["score"] for t in tags), reverse=True)
    assert result["aggregation"] == "single" and "timeline" not in result and "scores" not in result


def test_all_scores_are_the_sigmoids_in_label_order(cli):
    (result,) = _json_lines(cli("tag", "--json", "--all-scores", "-k", "3", DEMO))
    scores = np.array(result["scores"])
    assert scores.shape == (527,) and (scores >= 0).all() and (scores <= 1).all()
    assert [t["index"] for t in result["tags"]] == list(np.argsort(-scores)[:3])
    assert [t["score"] for t in result["tags"]] == pytest.approx(list(np.sort(scores)[::-1][:3]))


def test_hop_gives_a_timeline(cli):
    (result,) = _json_lines(cli("tag", "--json", "--hop", "2.5", "--window", "5", DEMO))
    assert [(w["start"], w["end"]) for w in result["timeline"]] == [(0.0, 5.0), (2.5, 7.5), (5.0, 10.0)]
    assert all(len(w["tags"]) == 5 for w in result["timeline"])
    assert result["aggregation"] == "max"
    best = max(w["tags"][0]["score"] for w in result["timeline"])
    assert result["tags"][0]["score"] == pytest.approx(best)


def test_plain_output_is_a_readable_table(cli):
    proc = cli("tag", DEMO)
    assert proc.returncode == 0, proc.stderr
    assert "Whale vocalization" in proc.stdout and "0.833" in proc.stdout and "mn04_as" in proc.stdout


def test_torch_backend_agrees_with_onnxruntime(cli, fixtures_dir):
    audio = fixtures_dir / "metro_station-paris.wav"
    (ort,) = _json_lines(cli("tag", "--json", "--all-scores", audio))
    (pt,) = _json_lines(cli("tag", "--json", "--all-scores", "--backend", "torch", audio))
    assert np.abs(np.array(ort["scores"]) - np.array(pt["scores"])).max() < 1e-3
    assert [t["index"] for t in ort["tags"]] == [t["index"] for t in pt["tags"]]
    assert ort["tags"][0]["label"] == "Train"


def test_checkpoint_path_runs_on_torch_and_converts_for_onnxruntime(cli, mn04_checkpoint):
    (pt,) = _json_lines(cli("tag", "--json", "--all-scores", "--model", mn04_checkpoint, DEMO))
    assert pt["model"] == "mn04_as_mAP_432"
    proc = cli("tag", "--json", "--all-scores", "--model", mn04_checkpoint, "--backend", "onnxruntime", DEMO)
    (ort,) = _json_lines(proc)
    assert "exporting" in proc.stderr  # converted once, into the cache
    assert np.abs(np.array(ort["scores"]) - np.array(pt["scores"])).max() < 1e-3
    bundles = list((cli.cache / "bundles").iterdir())
    assert len(bundles) == 1 and bundles[0].name.startswith("mn04_as_mAP_432-899a8c621706")
    again = cli("tag", "--json", "--model", mn04_checkpoint, "--backend", "onnxruntime", DEMO)
    assert again.returncode == 0 and "exporting" not in again.stderr


def test_one_bad_file_does_not_stop_a_batch(cli, tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF not really a wave file")
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(10, np.float32), 32000)
    proc = cli("tag", "--json", bad, DEMO, short)
    assert proc.returncode == 1
    assert [json.loads(line)["path"] for line in proc.stdout.splitlines()] == [str(DEMO)]
    assert f"{bad}: cannot decode audio" in proc.stderr
    assert "audio too short: 10 samples; need at least 800" in proc.stderr
    assert "2 of 3 file(s) could not be tagged" in proc.stderr and "Traceback" not in proc.stderr


def test_silence_and_resampled_stereo_are_tagged(cli, tmp_path):
    silent = tmp_path / "silence.wav"
    sf.write(silent, np.zeros((48000, 2), np.int16), 48000, subtype="PCM_16")
    (result,) = _json_lines(cli("tag", "--json", silent))
    assert result["duration_s"] == 1.0 and result["tags"][0]["score"] < 0.5


@pytest.mark.parametrize(
    "args, message",
    [
        (["tag", "missing.wav"], "does not exist"),
        (["tag", "--top-k", "0", str(DEMO)], "--top-k"),
        (["tag", "--hop", "-1", str(DEMO)], "positive number of seconds"),
        (["tag", "--backend", "tflite", str(DEMO)], "'tflite' is not one of"),
        (["tag"], "Missing argument"),
    ],
)
def test_usage_errors_exit_2(cli, args, message):
    proc = cli(*args)
    assert proc.returncode == 2 and message in proc.stderr


def test_model_errors_exit_1_with_one_line(cli, tmp_path):
    proc = cli("tag", "--model", "mn99_as", DEMO)
    assert proc.returncode == 1 and "unknown model 'mn99_as'; expected one of mn01_as" in proc.stderr
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"x")
    proc = cli("tag", "--model", onnx_file, DEMO)
    assert proc.returncode == 1 and "pass the bundle folder" in proc.stderr
    tampered = tmp_path / "tampered"
    shutil.copytree(embedded_bundle_path(), tampered)
    with open(tampered / "model.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    proc = cli("tag", "--model", tampered, DEMO)
    assert proc.returncode == 1 and "model.onnx: sha256 mismatch" in proc.stderr
    assert all("Traceback" not in p for p in (proc.stderr,))


def test_models_lists_the_registry(cli):
    proc = cli("models")
    assert proc.returncode == 0
    for text in ("mn04_as", "mn40_as_ext", "dymn20_as", "embedded", "0bd7dc2443af", "899a8c621706"):
        assert text in proc.stdout
    data = json.loads(cli("models", "--json").stdout)
    rows = {r["name"]: r for r in data["models"]}
    assert len(rows) == 13 and rows["mn04_as"]["installed"] == "embedded"
    assert rows["dymn04_edge"]["installed"] == "embedded" and rows["dymn04_edge"]["url"] is None  # ours: no release file
    assert rows["mn10_as"]["sha256"] == "0bd7dc2443af498c289a2e739f02ebb515d6aa3fd3ab9db539c86123ae368a4e"
    assert rows["mn10_as"]["size_bytes"] == 19_708_753
    assert rows["mn10_as"]["url"] == "https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/mn10_as_mAP_471.pt"


def test_info_on_bundle_checkpoint_and_registry_name(cli, mn04_checkpoint):
    bundle = json.loads(cli("info", "--json").stdout)
    assert bundle["kind"] == "bundle" and bundle["name"] == "mn04_as" and bundle["classes"] == 527
    checkpoint = json.loads(cli("info", "--json", mn04_checkpoint).stdout)
    assert checkpoint["parameters"] == 983_599 and checkpoint["sha256"] == MN04_SHA
    assert checkpoint["architecture"]["family"] == "mn" and checkpoint["width"] == 0.4
    remote = json.loads(cli("info", "--json", "dymn10_as").stdout)
    assert remote["installed"] is False and remote["url"].endswith("/dymn10_as.pt")
    plain = cli("info")
    assert plain.returncode == 0 and "export_strategy" in plain.stdout


@pytest.mark.network
def test_fetch_and_tag_a_downloaded_model(cli, mn04_checkpoint):
    with FileServer() as server:
        server.files["/rel/mn04_as_mAP_432.pt"] = mn04_checkpoint.read_bytes()
        server.files["/rel/mn01_as_mAP_298.pt"] = mn04_checkpoint.read_bytes()  # wrong file under mn01's name
        proc = cli("fetch", "mn04_as", "--base-url", server.url + "/rel/")
        assert proc.returncode == 0, proc.stderr
        cached = cli.cache / "checkpoints" / "mn04_as_mAP_432.pt"
        assert f"sha256 {MN04_SHA}" in proc.stdout and cached.read_bytes() == mn04_checkpoint.read_bytes()
        # The environment variable works too; a registry checkpoint then runs on torch by default.
        proc = cli("tag", "--json", "--model", "mn01_as", DEMO, DYMN_EDGE_BASE_URL=server.url + "/rel/")
        assert proc.returncode == 1  # the registry promises width 0.1; the served file is width 0.4
        assert "expected width_mult=0.1 but the checkpoint is width_mult=0.4" in proc.stderr
        assert ("/rel/mn01_as_mAP_298.pt", None) in server.requests
        proc = cli("fetch", "mn04_as", "--sha256", "0" * 64, "--base-url", server.url + "/rel/")
        assert proc.returncode == 1 and "sha256" in proc.stderr
        missing = cli("fetch", "mn20_as", "--base-url", server.url + "/rel/", "--quiet")
        assert missing.returncode == 1 and "404" in missing.stderr


def test_commands_that_only_read_a_bundle_take_an_embedded_name(cli, tmp_path):
    pytest.importorskip("openvino")
    proc = cli("export", "openvino", "mn04_as", "-o", tmp_path / "ov")
    assert proc.returncode == 0, proc.stderr
    assert "OpenVINO IR" in proc.stdout and json.loads((tmp_path / "ov" / "manifest.json").read_text())["name"] == "mn04_as"
    bad = cli("calibrate", "mn05_as", "--audio", tmp_path, "-o", tmp_path / "int8")
    assert bad.returncode == 2
    assert "'mn05_as': no such bundle folder, and not an embedded model (" in bad.stderr and "dymn04_edge" in bad.stderr
    doctor = cli("doctor", "mn04_as", "--json")
    assert doctor.returncode == 0, doctor.stderr
    runs = {r["backend"]: r for r in json.loads(doctor.stdout)["runs"]}
    assert runs["onnxruntime"]["status"] == "reference" and runs["openvino"]["status"] == "ok"
    if importlib.util.find_spec("tensorrt") is None:  # gets past the argument, as far as the missing TensorRT
        trt = cli("export", "tensorrt", "mn04_as", "-o", tmp_path / "trt")
        assert trt.returncode == 1 and "TensorRT is not installed" in trt.stderr


def test_tag_device_for_onnxruntime(cli):
    (on_cpu,) = _json_lines(cli("tag", "--json", "--device", "cpu", DEMO))
    assert on_cpu["tags"][0]["label"] == "Whale vocalization"
    gpu = cli("tag", "--device", "CUDA", DEMO)  # PyPI's CPU wheel: no CUDA provider
    assert gpu.returncode == 1 and "onnxruntime has no CUDAExecutionProvider here (available: " in gpu.stderr
    fused = cli("tag", "--backend", "fused", "--device", "CUDA", DEMO)  # not silently ignored
    assert fused.returncode == 1 and "a device ('CUDA') can be chosen for the onnxruntime and openvino backends, not for fused" in fused.stderr
