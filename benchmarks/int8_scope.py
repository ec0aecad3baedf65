"""INT8 that pays on a CPU: the pointwise scope against the whole model, per backend, timed against FP32.

For each model and backend, three bundles run side by side: the FP32 bundle, INT8 with
``--scope pointwise`` (the default for ONNX Runtime and OpenVINO) and INT8 with ``--scope all``
(every layer, the default before). They are calibrated with the product's defaults on 64 windows of
shared/data/pool and run through the runtime's own backends (OpenVINO with the f32 precision hint,
static shapes), timed in interleaved rounds (batch 1, a 10 s window of the demo clip). Accuracy is
measured on all 300 ESC-50 clips (disjoint from the pool) against that backend's FP32 run.

Models: mn04_as and dymn04_edge (embedded, trained) and dymn10 (EfficientAT's initialisation,
`grouped`, latency only: it is untrained, so its agreement says nothing).

    python benchmarks/int8_scope.py [--threads 1 2] [--rounds 10] [--json benchmarks/results/int8_scope.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODELS = ("mn04_as", "dymn04_edge", "dymn10")
VARIANTS = {  # name: (backend, calibrate_bundle arguments); "fp32" is the source bundle itself
    "onnxruntime": [("pointwise", {}), ("all", {"scope": "all"}), ("pointwise-u8s8", {"activations": "uint8"}),
                    ("all-u8s8", {"scope": "all", "activations": "uint8"})],
    "openvino": [("pointwise", {}), ("all", {"scope": "all"})],
}


def _source(model: str, work: Path) -> Path:
    if model == "dymn10":
        import sys

        sys.path.insert(0, str(REPO / "benchmarks"))
        from make_dymn_checkpoints import init_export

        return init_export("dymn10", "grouped", work)
    from dymn_edge.runtime.registry import embedded_bundle_path

    return embedded_bundle_path(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("DYMN_EDGE_SHARED", REPO.parent / "shared")))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--backends", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "int8_scope.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    from dymn_edge.bench_worker import features
    from dymn_edge.calibration.calibrate import calibrate_bundle
    from dymn_edge.calibration.dataset import build_feature_set
    from dymn_edge.calibration.validate import fidelity, labelled_metrics, run_model
    from dymn_edge.export.auto import interleaved_medians
    from dymn_edge.runtime import load_bundle
    from dymn_edge.runtime.backends import create_backend
    from dymn_edge.runtime.machine import machine_info

    info = machine_info()
    print(json.dumps(info), flush=True)
    x = features(10.0, 1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for model in args.models:
            source = load_bundle(_source(model, work))
            esc50 = None
            if model != "dymn10":
                esc50 = build_feature_set(args.shared / "data" / "esc50" / "labels.csv", config=source.frontend, window_s=source.window_s,
                                          labels=source.labels, progress=False)
            for backend in args.backends:
                bundles = {"fp32": source}
                for name, kwargs in VARIANTS[backend]:
                    bundles[name] = calibrate_bundle(source, args.shared / "data" / "pool", work / f"{model}-{backend}-{name}", backend=backend,
                                                     samples=64, progress=False, **kwargs)
                accuracy = {}
                if esc50 is not None:
                    runs = {k: run_model(b, esc50, backend=backend, timed_runs=0) for k, b in bundles.items()}
                    for k, r in runs.items():
                        labelled = labelled_metrics(r.scores, esc50.targets)
                        fid = fidelity(runs["fp32"], r) if k != "fp32" else {}
                        accuracy[k] = {"top5_agreement": fid.get("top5_agreement"), "top1_agreement": fid.get("top1_agreement"),
                                       "top5_hit": labelled["top5_hit"], "map": labelled["map"]}
                for threads in args.threads:
                    engines = {k: create_backend(backend, b, threads=threads) for k, b in bundles.items()}
                    ms = interleaved_medians({k: e.infer for k, e in engines.items()}, x, rounds=args.rounds, runs_per_round=5)
                    for k in bundles:
                        q = bundles[k].manifest.get("quantization", {})
                        row = {"model": model, "backend": backend, "variant": k, "threads": threads, "ms": ms[k], "speedup": ms["fp32"] / ms[k],
                               "scope_layers": q.get("scope_layers"), "method": q.get("method"), **accuracy.get(k, {})}
                        rows.append(row)
                        acc = "" if k not in accuracy else (f"  top5 agr {row['top5_agreement'] or 1:.3f}  hit {row['top5_hit']:.3f}  "
                                                            f"mAP {row['map']:.3f}")
                        print(f"{model:12s} {backend:12s} {k:15s} {threads}t {ms[k]:7.2f} ms  x{row['speedup']:.2f}{acc}", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": info, "rounds": args.rounds, "rows": rows}, indent=1, default=float))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
