"""Is static INT8 (ONNX Runtime QDQ) faster than FP32 on this machine's CPU? A short, self-contained check
for any x86 machine, e.g. one with AVX-512 VNNI or AMX, which the development machines lack.

Exports dymn04/dymn10 (EfficientAT init, seed 0) in the matmul and grouped strategies, quantizes
them with int8 (S8S8) and uint8 (U8S8) activations through the product's own path
(`calibration.ort_qdq.quantize_qdq`: per-channel int8 weights, kernel aggregations kept in float,
MinMax on 8 pool windows), takes mn04_as from the embedded bundle, and times FP32 against INT8 in
interleaved rounds at 1 and 2 threads, batch 1, a 10 s window. Prints the CPU's SIMD flags with the
results.

    python benchmarks/int8_ort_cpu.py [--calibration WINDOWS.npy | --shared ../shared] [--json OUT.json]
"""
import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[1]
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--calibration", type=Path, help="(N, 1, 128, 1000) float32 log-mel windows; default: 8 windows of SHARED/data/pool")
parser.add_argument("--shared", type=Path, default=Path(os.environ.get("DYMN_EDGE_SHARED", REPO.parent / "shared")))
parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "int8_ort_cpu.json")
args = parser.parse_args()
os.chdir(REPO)
work = Path(tempfile.mkdtemp(prefix="int8_ort_cpu_"))
from dymn_edge.runtime.machine import machine_info

info = machine_info()
print(json.dumps(info), flush=True)
if args.calibration:
    cal = list(np.load(args.calibration))
else:
    from dymn_edge.calibration.dataset import build_feature_set

    windows = build_feature_set(args.shared / "data" / "pool", window_s=10.0, samples=32, progress=False).features
    cal = [w[0] for w in windows if w.shape[-1] == 1000][:8]
x = cal[0][None]

def export(key):
    if key == "mn04":
        return Path("runtime/assets/models/mn04_as/model.onnx")
    from make_dymn_checkpoints import init_export
    from dymn_edge.runtime import load_bundle
    return load_bundle(init_export(*key.split("-"), work)).require("onnx")

def session(path, threads):
    so = ort.SessionOptions(); so.intra_op_num_threads = threads; so.inter_op_num_threads = 1
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return lambda v: s.run(None, {name: v})

from dymn_edge.calibration.dataset import FeatureSet
from dymn_edge.calibration.ort_qdq import quantize_qdq
from dymn_edge.export.auto import interleaved_medians

calibration = FeatureSet([c[None] for c in cal], [("calibration", float(i)) for i in range(len(cal))], None)

rows = []
for key in ["mn04", "dymn04-matmul", "dymn10-matmul", "dymn04-grouped", "dymn10-grouped"]:
    fp = export(key)
    variants = {"fp32": fp}
    for tag, activations in (("s8s8", "int8"), ("u8s8", "uint8")):
        variants[tag] = work / f"{key}-{tag}.onnx"
        quantize_qdq(Path(fp), variants[tag], calibration, method="minmax", activations=activations)
    for threads in (1, 2):
        runners = {tag: session(p, threads) for tag, p in variants.items()}
        med = interleaved_medians(runners, x, rounds=10, runs_per_round=5, warmup=5)
        row = {"model": key, "threads": threads, **{f"{t}_ms": v for t, v in med.items()},
               "s8s8_speedup": med["fp32"] / med["s8s8"], "u8s8_speedup": med["fp32"] / med["u8s8"]}
        rows.append(row)
        args.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
        print(f"{key:16s} {threads}t FP32 {med['fp32']:7.2f}  S8S8 {med['s8s8']:7.2f} (x{row['s8s8_speedup']:.2f})  U8S8 {med['u8s8']:7.2f} (x{row['u8s8_speedup']:.2f})", flush=True)
