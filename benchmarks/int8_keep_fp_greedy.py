"""How much of a model must stay in float for ONNX Runtime INT8 to keep FP32's top 5? Greedy by sensitivity.

The pool audio is split by file (even / odd). `calibrate --sensitivity`'s ranking is measured with
64 calibration windows from one half and 128 held-out windows from the other. The most harmful
parts are then kept in float one more at a time (`--keep-fp /PART/*`). Each INT8 model is scored
on all 300 ESC-50 clips, disjoint from the pool: top-5 and top-1 agreement with FP32, top-5 hit
rate and mAP over the mapped classes.

    python benchmarks/int8_keep_fp_greedy.py [--model mn04_as] [--steps 10]   # about 6 min for mn04_as
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from pathlib import Path

from dymn_edge.calibration.calibrate import calibrate_bundle, sensitivity
from dymn_edge.calibration.dataset import build_feature_set
from dymn_edge.calibration.validate import fidelity, labelled_metrics, run_model
from dymn_edge.runtime import load_bundle
from dymn_edge.runtime.audio import audio_files_in
from dymn_edge.runtime.registry import embedded_bundle_path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("DYMN_EDGE_SHARED", REPO.parent / "shared")))
    parser.add_argument("--model", default="mn04_as", help="embedded bundle")
    parser.add_argument("--steps", type=int, default=10, help="parts kept in float, at most")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "int8_keep_fp_greedy.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    bundle = load_bundle(embedded_bundle_path(args.model))
    work = Path(tempfile.mkdtemp(prefix="keep_fp_"))
    for i, path in enumerate(audio_files_in(args.shared / "data" / "pool")):
        half = work / ("calibration" if i % 2 == 0 else "held_out")
        half.mkdir(exist_ok=True)
        os.symlink(path, half / path.name)
    windows = dict(config=bundle.frontend, window_s=bundle.window_s, progress=False)
    calibration = build_feature_set(work / "calibration", samples=64, **windows)
    held_out = build_feature_set(work / "held_out", samples=128, **windows)
    esc50 = build_feature_set(args.shared / "data" / "esc50" / "labels.csv", labels=bundle.labels, **windows)
    ranking = [r for r in sensitivity(bundle, calibration, held_out, scope="all", progress=False) if r["part"] != "other"]
    for r in ranking:
        print(f"alone: {r['part']:16s} top-5 agreement {r['top5_agreement']:.3f}", flush=True)
    reference = run_model(bundle, esc50, timed_runs=0)
    fp32 = labelled_metrics(reference.scores, esc50.targets)
    steps = []
    for n in range(min(args.steps, len(ranking)) + 1):
        kept = [r["part"] for r in ranking[:n]]
        out = calibrate_bundle(bundle, work / "calibration", work / f"int8-{n}", backend="onnxruntime", samples=64,
                               keep_fp=[f"/{part}/*" for part in kept], scope="all", progress=False)
        run = run_model(out, esc50, timed_runs=0)
        fid, metrics = fidelity(reference, run), labelled_metrics(run.scores, esc50.targets)
        steps.append({"kept_in_float": kept, "top5_agreement": fid["top5_agreement"], "top1_agreement": fid["top1_agreement"],
                      "top5_hit": metrics["top5_hit"], "map": metrics["map"]})
        print(f"{n:2d} kept ({kept[-1] if kept else '-':14s}) top-5 agreement {fid['top5_agreement']:.3f}  top-1 {fid['top1_agreement']:.3f}  "
              f"hit {metrics['top5_hit']:.3f} (FP32 {fp32['top5_hit']:.3f})  mAP {metrics['map']:.4f} (FP32 {fp32['map']:.4f})", flush=True)
        args.json.write_text(json.dumps({"model": args.model, "ranking": ranking, "fp32": {k: fp32[k] for k in ("top5_hit", "map")},
                                         "steps": steps}, indent=2) + "\n")


if __name__ == "__main__":
    main()
