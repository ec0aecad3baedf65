"""`dymn-edge bench`: side-by-side measurement in worker processes, honest memory, clear errors."""

import json
import subprocess
import sys

from bundle_copies import without_fused_weights
from dymn_edge.runtime.registry import embedded_bundle_path


def _bench(*args, cwd):
    return subprocess.run([sys.executable, "-m", "dymn_edge", "bench", *map(str, args)], capture_output=True,
                          text=True, timeout=600, cwd=cwd)


def test_bench_json_on_the_embedded_bundle(tmp_path):
    proc = _bench(embedded_bundle_path(), "--backend", "torch,onnxruntime", "--threads", "1", "--rounds", "2", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["machine"]["cores"] >= 1 and report["settings"]["window_s"] == 10.0
    rows = {(r["backend"], r["strategy"]): r for r in report["results"]}
    assert set(rows) == {("torch", "eager"), ("onnxruntime", "static")}
    eager, ort = rows["torch", "eager"], rows["onnxruntime", "static"]
    for row in (eager, ort):
        assert row["runs"] == 10 and 0 < row["min_ms"] <= row["median_ms"] <= row["p90_ms"]
        assert abs(row["windows_per_s"] - 1000 / row["median_ms"]) < 1e-6
        assert abs(row["real_time_factor"] - row["median_ms"] / 10000) < 1e-9
    assert eager["speedup_vs_eager"] == 1.0 and abs(ort["speedup_vs_eager"] - eager["median_ms"] / ort["median_ms"]) < 1e-9
    # The bundle worker never loads torch, and its peak memory is its own, not the parent's.
    assert ort["torch_loaded"] is False and eager["torch_loaded"] is True
    assert ort["model_file"] == "model.onnx" and eager["model_file"].endswith(".pt")  # mn04_as has no run-time kernels
    assert ort["providers"] == ["CPUExecutionProvider"] and eager["providers"] is None  # the CPU wheel: no CUDA rows
    assert 30 < ort["peak_rss_mb"] < eager["peak_rss_mb"]


def test_bench_exports_each_dymn_strategy_against_the_naive_and_grouped_baselines(tmp_path, fixtures_dir, capsys):
    proc = _bench(fixtures_dir / "dymn04_reference_weights.pt", "--backend", "onnxruntime,fused", "--strategy", "matmul",
                  "--window", "2", "--rounds", "1", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)["results"]
    fused = [r for r in results if r["backend"] == "fused"]  # once, from the grouped export's fused weights
    assert [(r["strategy"], r["speedup_vs_naive"], r["torch_loaded"]) for r in fused] == [("fused", None, False)]
    rows = {r["strategy"]: r for r in results if r["backend"] == "onnxruntime"}
    assert set(rows) == {"naive", "grouped", "matmul"}  # both baselines are always measured
    assert rows["naive"]["speedup_vs_naive"] == 1.0 and rows["grouped"]["speedup_vs_grouped"] == 1.0
    for row in rows.values():
        assert abs(row["speedup_vs_naive"] - rows["naive"]["median_ms"] / row["median_ms"]) < 1e-9
    assert rows["matmul"]["speedup_vs_eager"] is None  # torch was not asked for
    # ONNX Runtime runs our exports' blocked form (model.nchwc.onnx); the naive export has none.
    assert {s: r["model_file"] for s, r in rows.items()} == {"naive": "model.onnx", "grouped": "model.nchwc.onnx",
                                                             "matmul": "model.nchwc.onnx"}
    from dymn_edge.display import print_benchmark

    print_benchmark(json.loads(proc.stdout))
    table = capsys.readouterr().out
    assert "grouped (nchwc)" in table and "matmul (nchwc)" in table and "naive (nchwc)" not in table and "naive" in table


def test_bench_tells_an_int8_bundle_from_its_fp32_source(tmp_path, shared):
    """An INT8 bundle keeps its source's name; its rows say "-int8" and carry the ratio to the FP32
    row measured in the same run, and it is never taken for a baseline."""
    from dymn_edge.calibration.calibrate import calibrate_bundle

    int8 = calibrate_bundle(embedded_bundle_path(), shared / "data" / "pool", tmp_path / "int8", samples=16, progress=False)
    proc = _bench(embedded_bundle_path(), int8.path, "--backend", "onnxruntime", "--threads", "1", "--rounds", "2", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {r["strategy"]: r for r in json.loads(proc.stdout)["results"]}
    assert set(rows) == {"static", "static-int8"} and rows["static"]["model"] == rows["static-int8"]["model"] == "mn04_as"
    assert rows["static"]["speedup_vs_fp32"] is None
    assert abs(rows["static-int8"]["speedup_vs_fp32"] - rows["static"]["median_ms"] / rows["static-int8"]["median_ms"]) < 1e-9


def test_bench_bad_input(tmp_path):
    proc = _bench("mn04_as", "--backend", "tflite", cwd=tmp_path)
    assert proc.returncode == 2 and "expected a comma-separated subset of torch, onnxruntime, openvino" in proc.stderr
    proc = _bench("mn04_as", "--threads", "0", cwd=tmp_path)
    assert proc.returncode == 2 and "thread counts must be >= 1" in proc.stderr
    plain = without_fused_weights("mn04_as", tmp_path / "plain")
    proc = _bench(str(plain), "--backend", "fused", cwd=tmp_path)
    assert proc.returncode == 1 and "nothing to benchmark: no candidate for these models and backends" in proc.stderr
    proc = _bench("no_such_model", cwd=tmp_path)
    assert proc.returncode == 1 and "unknown model 'no_such_model'" in proc.stderr


def test_the_table_names_a_gpu_provider_where_onnxruntime_used_one(capsys):
    """With onnxruntime-gpu the onnxruntime rows run on CUDA, whatever --threads says: the table says so."""
    from dymn_edge.display import print_benchmark

    row = {"model": "mn04_as", "strategy": "static", "threads": 1, "median_ms": 2.15, "p90_ms": 2.2, "windows_per_s": 465.0,
           "real_time_factor": 0.0002, "peak_rss_mb": 900.0, "speedup_vs_eager": None, "speedup_vs_grouped": None}
    report = {"machine": {"cpu": "Intel Xeon", "cores": 16}, "settings": {"batch": 1, "window_s": 10.0, "rounds": 1, "runs_per_round": 5},
              "results": [{**row, "backend": "onnxruntime", "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]},
                          {**row, "backend": "onnxruntime", "model": "cpu_row", "providers": ["CPUExecutionProvider"]},
                          {**row, "backend": "torch", "model": "eager_row", "providers": None}]}
    print_benchmark(report)
    lines = {line.split("│")[1].strip(): line for line in capsys.readouterr().out.splitlines() if line.count("│") > 3}
    assert "onnxruntime (CUDA)" in lines["mn04_as"]
    assert "onnxruntime (CUDA)" not in lines["cpu_row"] and "onnxruntime" in lines["cpu_row"]
