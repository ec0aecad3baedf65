"""How large an INT8 logit error the top-5 agreement target allows: FP32's own margins against INT8's errors.

mn04_as (embedded) and its default ONNX Runtime INT8 (64 pool windows) on all 300 ESC-50 clips:
the gap between FP32's 5th and 6th logits, INT8's logit errors on FP32's top 10, and the top-5
agreement FP32 keeps when Gaussian noise of a fraction of INT8's error spread is added to its logits.

    python benchmarks/int8_agreement_margin.py   # about 1 min
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from dymn_edge.calibration.calibrate import calibrate_bundle
from dymn_edge.calibration.dataset import build_feature_set
from dymn_edge.calibration.validate import run_model
from dymn_edge.runtime import load_bundle
from dymn_edge.runtime.metrics import top5_overlap
from dymn_edge.runtime.registry import embedded_bundle_path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("DYMN_EDGE_SHARED", REPO.parent / "shared")))
    parser.add_argument("--model", default="mn04_as")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    bundle = load_bundle(embedded_bundle_path(args.model))
    esc50 = build_feature_set(args.shared / "data" / "esc50" / "labels.csv", config=bundle.frontend, window_s=bundle.window_s,
                              labels=bundle.labels, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        int8 = calibrate_bundle(bundle, args.shared / "data" / "pool", Path(tmp) / "int8", backend="onnxruntime", samples=64, scope="all", progress=False)
        fp32, q = run_model(bundle, esc50, timed_runs=0).logits, run_model(int8, esc50, timed_runs=0).logits
    ranked = np.sort(fp32, axis=1)[:, ::-1]
    gap = ranked[:, 4] - ranked[:, 5]
    top10 = np.argsort(-fp32, axis=1)[:, :10]
    error = q - fp32
    on_top = np.abs(np.take_along_axis(error, top10, axis=1))
    overlap = top5_overlap(fp32, q)
    print(f"FP32 gap between the 5th and 6th logit: median {np.median(gap):.3f}, 25th percentile {np.percentile(gap, 25):.3f}, "
          f"10th {np.percentile(gap, 10):.3f}")
    print(f"INT8 |logit error| on FP32's top 10: median {np.median(on_top):.3f}, 90th percentile {np.percentile(on_top, 90):.3f}; "
          f"spread (std) over all logits {error.std():.3f}")
    print(f"INT8 top-5 agreement {overlap.mean():.3f}; all five kept in {np.mean(overlap == 1):.2f} of the windows")
    close = gap < 2 * np.median(on_top)
    print(f"windows whose 5th/6th gap is under twice the median error: {close.mean():.2f}, agreement {overlap[close].mean():.3f} "
          f"(the others {overlap[~close].mean():.3f})")
    rng = np.random.default_rng(0)
    for fraction in (0.25, 0.4, 0.5, 1.0):
        noisy = fp32 + rng.normal(0, fraction * error.std(), fp32.shape)
        print(f"FP32 + Gaussian noise of {fraction:.2f} x INT8's spread: top-5 agreement {top5_overlap(fp32, noisy).mean():.3f}")


if __name__ == "__main__":
    main()
