"""INT8 against FP32 for every model x strategy x backend: latency side by side, and accuracy on real audio.

Latency: 1 thread, batch 1, a 10 s window of the demo clip; FP32 and INT8 of each backend are
timed in interleaved rounds in one process (medians). Models: the real mn04_as, and dymn04/dymn10
with EfficientAT's initialisation (latency does not depend on weight values) in each export
strategy. Calibration: 32 windows of shared/data/pool.

Accuracy: the two trained models, mn04_as and the project's distilled dymn04_edge, on all 300
ESC-50 clips (disjoint from the pool, 64 pool windows calibrate): top-5 hit rate and mAP over the
mapped classes, FP32 and INT8, plus top-5 agreement with FP32, for each backend's default range
estimator, the alternatives, and the stem kept in float. The TensorRT Q/DQ model is run by ONNX
Runtime (no TensorRT here). The seeded dymn04 fixture is also calibrated and evaluated on its own
three inputs (fidelity only).

    python benchmarks/int8.py [--rounds 10] [--shared ../shared]   # -> benchmarks/results/int8.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from dymn_edge.calibration.calibrate import calibrate_bundle
from dymn_edge.calibration.dataset import FeatureSet, build_feature_set
from dymn_edge.calibration.ort_qdq import quantize_qdq
from dymn_edge.calibration.validate import fidelity, labelled_metrics, run_model
from dymn_edge.runtime.metrics import top5_overlap
from dymn_edge.export.auto import interleaved_medians
from dymn_edge.export.onnx import export_bundle
from dymn_edge.runtime import load_bundle
from dymn_edge.runtime.backends import create_backend
from dymn_edge.runtime.machine import machine_info
from dymn_edge.train.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def _features(window_s: float = 10.0) -> np.ndarray:
    from dymn_edge.bench_worker import features

    return features(window_s, 1)


def _runner(backend: str, bundle_path: Path):
    engine = create_backend(backend, load_bundle(bundle_path), threads=1)
    return engine.infer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("DYMN_EDGE_SHARED", REPO.parent / "shared")))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "int8.json")
    parser.add_argument("--accuracy-only", action="store_true", help="skip the latency table (keeps the latency rows of an existing --json)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    pool, esc50 = args.shared / "data" / "pool", args.shared / "data" / "esc50" / "labels.csv"
    x = _features()
    rows, accuracy = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        from make_dymn_checkpoints import write_init_checkpoint

        models = {"mn04_as": (args.shared / "weights" / "mn04_as_mAP_432.pt", ["static"])}
        for name in ("dymn04", "dymn10"):
            models[name] = (write_init_checkpoint(name, work / f"{name}_init.pt"), ["grouped", "matmul", "expanded"])
        for name, (checkpoint, strategies) in ({} if args.accuracy_only else models).items():
            loaded = load_checkpoint(checkpoint)
            for strategy in strategies:
                fp32 = export_bundle(loaded, work / f"{name}-{strategy}", name=name, strategy="grouped" if strategy == "static" else strategy,
                                     batch=1, include_checkpoint=False, verify_parity=False).path
                int8 = {b: calibrate_bundle(fp32, pool, work / f"{name}-{strategy}-int8-{b}", backend=b, samples=32, scope="all", progress=False).path
                        for b in ("onnxruntime", "openvino")}
                runners = {("onnxruntime", "fp32"): _runner("onnxruntime", fp32), ("onnxruntime", "int8"): _runner("onnxruntime", int8["onnxruntime"]),
                           ("openvino", "fp32"): _runner("openvino", fp32), ("openvino", "int8"): _runner("openvino", int8["openvino"])}
                ms = interleaved_medians(runners, x, rounds=args.rounds, runs_per_round=5, warmup=3)
                for backend in ("onnxruntime", "openvino"):
                    row = {"model": name, "strategy": strategy, "backend": backend, "fp32_ms": ms[backend, "fp32"], "int8_ms": ms[backend, "int8"],
                           "int8_speedup": ms[backend, "fp32"] / ms[backend, "int8"]}
                    rows.append(row)
                    print(f"{name:8s} {strategy:9s} {backend:12s} FP32 {row['fp32_ms']:7.2f} ms  INT8 {row['int8_ms']:7.2f} ms  x{row['int8_speedup']:.2f}", flush=True)
        # Accuracy of the two trained models on all 300 ESC-50 clips, calibrated on pool audio
        # (disjoint): every backend with its default estimator, the other estimators, and the stem in float.
        data = build_feature_set(esc50, window_s=10.0, labels=load_bundle(REPO / "runtime" / "assets" / "models" / "mn04_as").labels, progress=False)
        variants = [("onnxruntime", None, (), "int8"), ("onnxruntime", "minmax", (), "int8"), ("onnxruntime", None, ("stem",), "int8"),
                    ("onnxruntime", None, (), "uint8"), ("openvino", None, (), "int8"), ("openvino", "percentile", (), "int8"),
                    ("openvino", None, ("stem",), "int8"), ("tensorrt", None, (), "int8"), ("tensorrt", "minmax", (), "int8")]
        for name in ("mn04_as", "dymn04_edge"):
            fp32 = REPO / "runtime" / "assets" / "models" / name
            ref = run_model(fp32, data, timed_runs=0)
            accuracy[name] = {"fp32": labelled_metrics(ref.scores, data.targets)}
            for backend, method, keep, activations in variants:
                out = calibrate_bundle(fp32, pool, work / f"acc-{name}-{backend}-{method}-{'-'.join(keep)}-{activations}", backend=backend,
                                       method=method, activations=activations, keep_fp=list(keep), samples=64, scope="all",
                                       progress=False)
                run = run_model(out, data, backend="onnxruntime" if backend == "tensorrt" else backend, timed_runs=0)
                fid = fidelity(ref, run)
                q = out.manifest["quantization"]
                key = (f"int8-{backend}-{q['method']}" + (f"-fallback-from-{q['fallback_from']}" if q.get("fallback_from") else "")
                       + ("-default" if method is None else "") + "".join(f"-keep-{k}" for k in keep) + ("-u8s8" if activations == "uint8" else ""))
                accuracy[name][key] = {**labelled_metrics(run.scores, data.targets), "top5_agreement": fid["top5_agreement"],
                                       "top1_agreement": fid["top1_agreement"]}
                print(f"{name:12s} {key:40s} top-5 agreement {fid['top5_agreement']:.3f}  top-5 hit {accuracy[name][key]['top5_hit']:.3f} "
                      f"(FP32 {accuracy[name]['fp32']['top5_hit']:.3f})  mAP {accuracy[name][key]['map']:.4f} "
                      f"(FP32 {accuracy[name]['fp32']['map']:.4f})", flush=True)
        fixtures = args.shared / "fixtures" / "efficientat"
        inputs = np.load(fixtures / "dymn04_reference.npz")["input"]
        rows_fx = FeatureSet([inputs[i : i + 1] for i in range(3)], [("fixture", float(i)) for i in range(3)], None)
        loaded = load_checkpoint(fixtures / "dymn04_reference_weights.pt")
        for strategy in ("grouped", "matmul", "expanded"):
            fp32 = export_bundle(loaded, work / f"fx-{strategy}", name="dymn04_fixture", strategy=strategy, batch=1, include_checkpoint=False,
                                 probe=inputs).path
            ref = run_model(fp32, rows_fx, timed_runs=0)
            quantize_qdq(load_bundle(fp32).require("onnx"), work / f"fx-{strategy}-int8.onnx", rows_fx)
            import onnxruntime as ort

            session = ort.InferenceSession(str(work / f"fx-{strategy}-int8.onnx"), providers=["CPUExecutionProvider"])
            got = np.concatenate([session.run(["logits"], {"mel": f})[0] for f in rows_fx.features])
            err = float(np.abs(got - ref.logits).max())
            agree = float(top5_overlap(ref.logits, got).mean())
            accuracy[f"dymn04_fixture-{strategy}"] = {"int8-onnxruntime": {"top5_agreement": agree, "max_logit_error": err,
                                                                          "logit_range": float(np.abs(ref.logits).max())}}
            print(f"dymn04 fixture {strategy:9s} ORT INT8: top-5 agreement {agree:.3f}, max |dlogit| {err:.3f}", flush=True)
    for name, acc in accuracy.items():
        print(name, json.dumps({k: {m: round(v, 4) for m, v in d.items() if isinstance(v, float)} for k, d in acc.items()}))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    clean = {name: {k: {m: v for m, v in d.items() if m != "per_class_ap"} for k, d in acc.items()} for name, acc in accuracy.items()}
    if args.accuracy_only and args.json.exists():
        rows = json.loads(args.json.read_text())["latency"]
    args.json.write_text(json.dumps({"machine": machine_info(), "latency": rows, "accuracy": clean}, indent=2) + "\n")


if __name__ == "__main__":
    main()
