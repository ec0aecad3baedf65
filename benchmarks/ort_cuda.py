"""ONNX Runtime's CUDA provider on dymn-edge models: latency beside the CPU provider and PyTorch on the GPU,
and INT8 Q/DQ bundles on the GPU against the same bundles on the CPU.

For the lent GPU machine (onnxruntime-gpu and an NVIDIA GPU); nothing else in the project needs one.

Latency: per model and batch size, the median and p90 of ``session.run`` with numpy arrays in and out
(what the runtime does: the host-device copies are included), for the CUDA provider with the
runtime's options (no TF32; ``--tf32`` allows it, ONNX Runtime's own default, as the H200 run in
docs/benchmarks.md did) and the CPU provider with all cores; and of the PyTorch module on the GPU
(``torch.inference_mode``, synchronised). Runs repeat until about ``--seconds`` have passed (at least
5, at most 100 runs, after 5 warm-ups).

Models: ONNX files given as ``NAME=PATH[:CHECKPOINT]``. The checkpoint adds the PyTorch row; a model
name of ``create_model`` (``dymn10``) instead times EfficientAT's random init, as eager_latency.py does.

INT8: each ``--int8 NAME=BUNDLE`` runs its model.onnx on both providers over ``--features`` (a .npy of
log-mel windows) and reports the largest logit difference between them and the top-5 agreement of
each with ``--fp32 BUNDLE`` on the CUDA provider.

    python benchmarks/ort_cuda.py --model mn04_as=runtime/assets/models/mn04_as/model.onnx:runtime/assets/models/mn04_as/model.pt \\
        [--batches 1,32] [--int8 NAME=BUNDLE --fp32 NAME=BUNDLE --features F.npy] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from dymn_edge.runtime.backends.onnxruntime import provider_options
from dymn_edge.runtime.machine import machine_info

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def session(path: Path, provider: str, *, tf32: bool = False, options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    """``provider`` with the runtime's options (``tf32`` allows TF32 on CUDA), failing where it does not start."""
    configured = {**provider_options(provider), **({"use_tf32": "1"} if tf32 else {})}
    sess = ort.InferenceSession(str(path), options, providers=[(provider, configured), CPU] if provider != CPU else [CPU])
    if sess.get_providers()[0] != provider:  # onnxruntime falls back to the CPU with only a log line
        raise SystemExit(f"{path}: {provider} did not load (providers {sess.get_providers()})")
    return sess


def timed(run, seconds: float) -> dict:
    for _ in range(5):
        run()
    times = []
    start = time.perf_counter()
    while len(times) < 5 or (len(times) < 100 and time.perf_counter() - start < seconds):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1e3)
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)), "runs": len(times)}


def window(batch: int, frames: int = 1000, seed: int = 0) -> np.ndarray:
    """Log-mel-like input: the latency does not depend on the values."""
    return np.random.default_rng(seed).normal(-4.0, 2.0, (batch, 1, 128, frames)).astype(np.float32)


def latency_rows(name: str, onnx_path: Path, checkpoint: str | None, batches: list[int], seconds: float, tf32: bool) -> list[dict]:
    rows = []
    for provider in (CUDA, CPU):
        sess = session(onnx_path, provider, tf32=tf32)
        feed = sess.get_inputs()[0].name
        fixed = sess.get_inputs()[0].shape[0]
        for batch in batches if not isinstance(fixed, int) else [fixed]:  # a fixed-batch export runs at its own batch
            x = window(batch)
            stats = timed(lambda: sess.run(None, {feed: x}), seconds)
            rows.append({"model": name, "runner": f"onnxruntime {provider.removesuffix('ExecutionProvider')}", "batch": batch, **stats})
            print(rows[-1], flush=True)
    if checkpoint is not None:
        import torch

        from dymn_edge.train.checkpoint import load_checkpoint
        from dymn_edge.train.models import DyMN, create_model

        if Path(checkpoint).is_file():
            model = load_checkpoint(checkpoint).model
        else:
            torch.manual_seed(0)
            model = create_model(str(checkpoint))
            if isinstance(model, DyMN):
                model.set_temperature(1.0)
        model = model.cuda().eval()
        for batch in batches:
            x = torch.from_numpy(window(batch)).cuda()

            def run():
                with torch.inference_mode():
                    model(x)
                torch.cuda.synchronize()

            stats = timed(run, seconds)
            rows.append({"model": name, "runner": "pytorch eager CUDA", "batch": batch, **stats})
            print(rows[-1], flush=True)
    return rows


def top5(logits: np.ndarray) -> np.ndarray:
    return np.sort(np.argsort(-logits, axis=1)[:, :5], axis=1)


def int8_rows(int8: dict[str, Path], fp32: dict[str, Path], features: np.ndarray, tf32: bool) -> list[dict]:
    rows = []
    for name, bundle in int8.items():
        logits = {}
        for provider in (CUDA, CPU):
            sess = session(bundle / "model.onnx", provider, tf32=tf32)
            feed = sess.get_inputs()[0].name
            logits[provider] = np.concatenate([sess.run(None, {feed: features[i : i + 1]})[0] for i in range(len(features))])
        ref_sess = session(fp32[name] / "model.onnx", CUDA, tf32=tf32)
        feed = ref_sess.get_inputs()[0].name
        ref = np.concatenate([ref_sess.run(None, {feed: features[i : i + 1]})[0] for i in range(len(features))])
        row = {"model": name, "bundle": str(bundle), "windows": len(features),
               "max_abs_diff_cuda_vs_cpu": float(np.abs(logits[CUDA] - logits[CPU]).max()),
               "top5_agreement_cuda": float((top5(logits[CUDA]) == top5(ref)).all(axis=1).mean()),
               "top5_agreement_cpu": float((top5(logits[CPU]) == top5(ref)).all(axis=1).mean())}
        rows.append(row)
        print(row, flush=True)
    return rows


def named_paths(items: list[str], option: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise SystemExit(f"{option} {item!r}: expected NAME=PATH")
        out[name] = path
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="NAME=ONNX[:CHECKPOINT]")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--seconds", type=float, default=2.0, help="time spent per measurement, roughly")
    parser.add_argument("--int8", action="append", default=[], help="NAME=INT8_BUNDLE")
    parser.add_argument("--fp32", action="append", default=[], help="NAME=FP32_BUNDLE, the reference of --int8 NAME")
    parser.add_argument("--features", type=Path, help=".npy of log-mel windows (N, 1, 128, frames) for --int8")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 on the CUDA provider (ONNX Runtime's default; the runtime turns it off)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if CUDA not in ort.get_available_providers():
        raise SystemExit(f"onnxruntime {ort.__version__} has no CUDA provider here (available: {ort.get_available_providers()})")
    batches = [int(b) for b in args.batches.split(",")]
    result = {"machine": machine_info(), "onnxruntime": ort.__version__, "providers": ort.get_available_providers(), "tf32": args.tf32,
              "latency": [], "int8": []}
    try:
        import torch

        result["gpu"] = torch.cuda.get_device_name()
    except Exception as e:  # only the PyTorch rows need torch
        result["gpu"] = f"unknown ({e})"
    for name, spec in named_paths(args.model, "--model").items():
        onnx_path, _, checkpoint = spec.partition(":")
        result["latency"] += latency_rows(name, Path(onnx_path), checkpoint or None, batches, args.seconds, args.tf32)
    if args.int8:
        fp32 = {k: Path(v) for k, v in named_paths(args.fp32, "--fp32").items()}
        int8 = {k: Path(v) for k, v in named_paths(args.int8, "--int8").items()}
        missing = [k for k in int8 if k not in fp32]
        if missing or args.features is None:
            raise SystemExit(f"--int8 needs --features and a --fp32 for each of {', '.join(int8)} (missing: {', '.join(missing) or '--features'})")
        features = np.load(args.features).astype(np.float32)
        result["int8"] = int8_rows(int8, fp32, features, args.tf32)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print("\n| model | runner | batch | median ms | p90 ms |\n|---|---|---|---|---|")
    for r in result["latency"]:
        print(f"| {r['model']} | {r['runner']} | {r['batch']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} |")


if __name__ == "__main__":
    main()
