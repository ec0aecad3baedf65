"""A bundle's model.onnx against its model.nchwc.onnx in ONNX Runtime, side by side (runtime/nchwc.py).

Both files of each bundle run in this one process, in interleaved rounds of 5 runs, on the demo
clip's log-mel looped to the bundle's window; the medians and their ratio are printed per thread count.
The logits of the two are compared too.

    python benchmarks/ort_nchwc.py BUNDLE... [--threads 1,2] [--rounds 20] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from dymn_edge.bench_worker import features
from dymn_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend
from dymn_edge.runtime.bundle import load_bundle
from dymn_edge.runtime.machine import machine_info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        runners, inputs = {}, {}
        for path in args.bundles:
            bundle = load_bundle(path)
            blocked = bundle.require("onnx_nchwc", hint="; export it again with this dymn-edge")
            batch = bundle.manifest["inputs"][0]["shape"][0]
            x = features(bundle.window_s, batch if isinstance(batch, int) else 1)
            inputs[path] = x
            for form, file in (("model.onnx", bundle.require("onnx")), ("model.nchwc.onnx", blocked)):
                # Idle pool threads would otherwise spin between runs and slow the next session down.
                runners[path, form] = OnnxRuntimeBackend(file, threads=threads, spin=threads == 1).infer
        times: dict = {key: [] for key in runners}
        for key, run in runners.items():  # warm-up: first runs allocate and pick kernels
            run(inputs[key[0]])
        for _ in range(args.rounds):
            for key, run in runners.items():
                start = time.perf_counter()
                for _ in range(5):
                    run(inputs[key[0]])
                times[key].append((time.perf_counter() - start) / 5 * 1e3)
        medians = {key: float(np.median(ms)) for key, ms in times.items()}
        for path in args.bundles:
            diff = float(np.abs(runners[path, "model.onnx"](inputs[path]) - runners[path, "model.nchwc.onnx"](inputs[path])).max())
            portable, blocked = medians[path, "model.onnx"], medians[path, "model.nchwc.onnx"]
            rows.append({"bundle": str(path), "threads": threads, "model_onnx_ms": round(portable, 3),
                         "model_nchwc_onnx_ms": round(blocked, 3), "speedup": round(portable / blocked, 3), "max_abs_logit_diff": diff})
            print(f"{path.name:24s} {threads}t  model.onnx {portable:7.2f} ms  model.nchwc.onnx {blocked:7.2f} ms  "
                  f"x{portable / blocked:.2f}  max |logit diff| {diff:.1e}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_info(), "rounds": args.rounds, "results": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
