"""Is OpenVINO INT8 (NNCF) faster than FP32 on this CPU? mn04, dymn04 and dymn10, side by side.

FP32: mn04_as from the embedded bundle; dymn04/dymn10 with EfficientAT's initialisation (seed 0;
latency does not depend on weight values) exported in `grouped` (the fastest FP32 strategy in
OpenVINO) and `expanded` (constant weights, so every convolution can run in INT8). INT8: NNCF
with the runtime's defaults on 32 windows of shared/data/pool, or the IRs in ``--int8-dir`` (made
on another machine, for a device without NNCF). Each model runs with INFERENCE_PRECISION_HINT=f32
(what the runtime's backend sets) and with OpenVINO's default (bf16 on CPUs with AMX or
avx512_bf16), in interleaved rounds, batch 1, a 10 s window. Then OpenVINO's per-node counters,
summed by layer type and kernel, show where the time goes.

    python benchmarks/int8_openvino_cpu.py [--int8-dir DIR] [--json benchmarks/results/int8_openvino_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = ("mn04", "dymn04-grouped", "dymn04-expanded", "dymn10-grouped", "dymn10-expanded")


def _fp32_bundle(key: str, work: Path) -> Path:
    if key == "mn04":
        return REPO / "runtime" / "assets" / "models" / "mn04_as"
    from make_dymn_checkpoints import init_export

    name, strategy = key.split("-")
    return init_export(name, strategy, work)


def _int8_xml(key: str, fp32: Path, work: Path, pool: Path, int8_dir: Path | None) -> Path:
    if int8_dir is not None:
        return int8_dir / key / "model.xml"
    from dymn_edge.calibration.calibrate import calibrate_bundle

    return calibrate_bundle(fp32, pool, work / f"{key}-int8", backend="openvino", samples=32, scope="all", progress=False,
                            overwrite=True).require("openvino_xml")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("DYMN_EDGE_SHARED", REPO.parent / "shared")))
    parser.add_argument("--int8-dir", type=Path, default=None, help="prebuilt NNCF IRs: DIR/<model>/model.xml")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "int8_openvino_cpu.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    import openvino as ov

    from dymn_edge.bench_worker import features
    from dymn_edge.export.auto import interleaved_medians
    from dymn_edge.runtime import load_bundle
    from dymn_edge.runtime.machine import machine_info

    core = ov.Core()
    info = {**machine_info(), "openvino_capabilities": core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")}
    print(json.dumps(info), flush=True)
    x = features(10.0, 1)

    def request(path: Path, threads: int, hint: str | None, perf: bool = False):
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", **({"INFERENCE_PRECISION_HINT": hint} if hint else {})}
        return core.compile_model(core.read_model(str(path)), "CPU", {**config, **({"PERF_COUNT": True} if perf else {})}).create_infer_request()

    rows, profiles = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = {}
        for key in MODELS:
            fp32 = _fp32_bundle(key, work)
            paths[key] = {"fp32": load_bundle(fp32).require("onnx"), "int8": _int8_xml(key, fp32, work, args.shared / "data" / "pool", args.int8_dir)}
        for threads in (1, 2):
            for key in MODELS:
                runs = {}
                for precision in ("fp32", "int8"):
                    for hint in ("f32", None):
                        req = request(paths[key][precision], threads, hint)
                        runs[precision, hint or "default"] = (lambda r: lambda v: r.infer({0: v}))(req)
                ms = interleaved_medians(runs, x, rounds=args.rounds, runs_per_round=5, warmup=3)
                row = {"model": key, "threads": threads, **{f"{p}_{h}_ms": round(v, 3) for (p, h), v in ms.items()}}
                rows.append(row)
                print(json.dumps(row), flush=True)
        for key in ("mn04", "dymn10-grouped", "dymn10-expanded"):
            for precision in ("fp32", "int8"):
                req = request(paths[key][precision], 1, "f32", perf=True)
                for _ in range(3):
                    req.infer({0: x})
                by: dict[str, float] = {}
                for node in req.get_profiling_info():
                    by[f"{node.node_type}|{node.exec_type}"] = by.get(f"{node.node_type}|{node.exec_type}", 0.0) + node.real_time.total_seconds() * 1e3
                profiles[f"{key}-{precision}"] = dict(sorted(((k, round(v, 3)) for k, v in by.items()), key=lambda kv: -kv[1])[:15])
                print(key, precision, json.dumps(profiles[f"{key}-{precision}"]), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": info, "rows": rows, "profiles": profiles}, indent=2) + "\n")


if __name__ == "__main__":
    main()
