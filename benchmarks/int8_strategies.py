"""Which DyMN export strategy quantizes best, per backend: INT8 accuracy of dymn04_edge in every strategy.

The project's distilled dymn04_edge (runtime/assets/models/dymn04_edge/model.pt) is exported in
every strategy (`grouped`, `matmul`, `expanded`, `hybrid`), calibrated for each backend with its default estimator on 64
windows of shared/data/pool, and evaluated on all 300 ESC-50 clips (disjoint from the pool): top-5
and top-1 agreement with the FP32 export of the same strategy, top-5 hit rate and mAP over the
mapped classes. The TensorRT Q/DQ model is run by ONNX Runtime (no TensorRT here). The figures
feed `export.strategies.INT8_STRATEGIES`, the table `--strategy auto` takes for INT8.

    python benchmarks/int8_strategies.py   # -> benchmarks/results/int8_strategies.json (about 20 min)
    python benchmarks/int8_strategies.py --strategies hybrid   # one strategy, the others kept from the JSON
    python benchmarks/int8_strategies.py --scope pointwise --backends onnxruntime,openvino \
        --json benchmarks/results/int8_strategies_pointwise.json   # the CPU backends' default scope
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from pathlib import Path

from dymn_edge.calibration.calibrate import BACKENDS, calibrate_bundle
from dymn_edge.calibration.dataset import build_feature_set
from dymn_edge.calibration.validate import fidelity, labelled_metrics, run_model
from dymn_edge.export.onnx import export_bundle
from dymn_edge.export.strategies import STRATEGIES
from dymn_edge.runtime import load_bundle
from dymn_edge.runtime.machine import machine_info
from dymn_edge.train.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("DYMN_EDGE_SHARED", REPO.parent / "shared")))
    parser.add_argument("--model", default="dymn04_edge", help="embedded bundle with a checkpoint (model.pt)")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="calibration window sampling seed")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "int8_strategies.json")
    parser.add_argument("--scope", default="all", choices=("all", "pointwise"), help="what calibrate quantizes (all: every layer)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated")
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help="comma-separated; the results of the others are kept from an existing --json of the same model, samples and seed")
    args = parser.parse_args()
    strategies = args.strategies.split(",")
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown:
        parser.error(f"unknown strategies {unknown}; expected some of {', '.join(STRATEGIES)}")
    backends = args.backends.split(",")
    if sorted(set(backends) - set(BACKENDS)):
        parser.error(f"unknown backends {sorted(set(backends) - set(BACKENDS))}; expected some of {', '.join(BACKENDS)}")
    settings = {"model": args.model, "samples": args.samples, "seed": args.seed, "scope": args.scope}
    logging.basicConfig(level=logging.ERROR)
    pool, esc50 = args.shared / "data" / "pool", args.shared / "data" / "esc50" / "labels.csv"
    embedded = load_bundle(REPO / "runtime" / "assets" / "models" / args.model)
    data = build_feature_set(esc50, window_s=10.0, labels=embedded.labels, progress=False)
    checkpoint = load_checkpoint(embedded.require("checkpoint"))
    results: dict = {}
    if args.json.exists():
        previous = json.loads(args.json.read_text())
        if {k: previous.get(k, "all" if k == "scope" else None) for k in settings} == settings:
            results = {s: r for s, r in previous["results"].items() if s not in strategies}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for strategy in strategies:
            fp32 = export_bundle(checkpoint, work / strategy, name=args.model, strategy=strategy, batch=1, include_checkpoint=False,
                                 verify_parity=False)
            ref = run_model(fp32, data, timed_runs=0)
            results[strategy] = {"fp32": {k: v for k, v in labelled_metrics(ref.scores, data.targets).items() if k != "per_class_ap"}}
            for backend in backends:
                out = calibrate_bundle(fp32, pool, work / f"{strategy}-{backend}", backend=backend, samples=args.samples, seed=args.seed,
                                      scope=args.scope, progress=False)
                run = run_model(out, data, backend="onnxruntime" if backend == "tensorrt" else backend, timed_runs=0)
                fid = fidelity(ref, run)
                metrics = labelled_metrics(run.scores, data.targets)
                q = out.manifest["quantization"]
                results[strategy][backend] = {"method": q["method"], "fallback_from": q.get("fallback_from"),
                                              "top5_agreement": fid["top5_agreement"], "top1_agreement": fid["top1_agreement"],
                                              "mean_kl": fid["mean_kl"], "top5_hit": metrics["top5_hit"], "map": metrics["map"]}
                print(f"{strategy:9s} {backend:12s} {q['method']:10s} top-5 agreement {fid['top5_agreement']:.3f}  top-1 {fid['top1_agreement']:.3f}  "
                      f"hit {metrics['top5_hit']:.3f} (FP32 {results[strategy]['fp32']['top5_hit']:.3f})  mAP {metrics['map']:.4f}", flush=True)
                args.json.write_text(json.dumps({"machine": machine_info(), **settings, "results": results}, indent=2) + "\n")
    best = {b: max(results, key=lambda s: results[s][b]["top5_agreement"]) for b in backends}
    print("highest top-5 agreement per backend (the rule in INT8_PREFERENCE also weighs latency and noise):", best)
    args.json.write_text(json.dumps({"machine": machine_info(), **settings, "results": results, "highest_agreement": best}, indent=2) + "\n")


if __name__ == "__main__":
    main()
