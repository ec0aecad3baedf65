"""Single-thread PyTorch eager latency of mn04, dymn04 and dymn10 on one 10 s window.

Why: DyMN's dynamic convolutions, Dy-ReLU and coordinate attention cost far more per MAC in
eager PyTorch than MobileNetV3's static blocks. Before judging what export (ONNX, fusion) buys,
the eager baseline must be measured on the target CPU, with the models timed side by side
under the same machine noise.

Method: random EfficientAT init (weights do not change the work done), ``model.eval()``, DyMN
attention temperature 1.0 (as for trained AudioSet models), input (1, 1, 128, 1000) float32 =
10 s of log-mel at 32 kHz / hop 320, ``torch.set_num_threads(1)``, ``torch.inference_mode()``,
warm-up runs per model, then interleaved rounds: each round times every model once (in a
rotating order), so slow spells of the machine hit all models alike.

Usage::

    python benchmarks/eager_latency.py [--rounds 200] [--warmup 10] [--out benchmarks/results/eager_latency.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dymn_edge.runtime.machine import machine_info
from dymn_edge.train.models import DyMN, create_model

__all__ = ["MODELS", "INPUT_SHAPE", "build", "measure", "main"]

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
MODELS = ("mn04", "dymn04", "dymn10")
INPUT_SHAPE = (1, 1, 128, 1000)  # (batch, channel, mel bins, frames): 10 s at 32 kHz, hop 320


def build(name: str, seed: int = 0) -> torch.nn.Module:
    """A model in eval mode with random EfficientAT init; DyMN temperature fixed at 1.0."""
    torch.manual_seed(seed)
    model = create_model(name).eval()
    if isinstance(model, DyMN):
        model.set_temperature(1.0)
    return model


def measure(models: dict[str, torch.nn.Module], *, rounds: int, warmup: int, progress: bool = True) -> dict[str, np.ndarray]:
    """Time each model's forward pass on the same input.

    Args:
        models: name -> model in eval mode.
        rounds: timed rounds; each times every model once, the order rotating per round.
        warmup: untimed runs per model before the first round.

    Returns:
        name -> (rounds,) float64 latencies in milliseconds.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    x = torch.randn(INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
    names = list(models)
    times = {name: np.zeros(rounds) for name in names}
    columns = [TextColumn("{task.description:<8}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    with torch.inference_mode(), Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("warm-up", total=warmup * len(names))
        for name in names:
            for _ in range(warmup):
                models[name](x)
                bar.advance(task)
        task = bar.add_task("rounds", total=rounds)
        for r in range(rounds):
            for j in range(len(names)):
                name = names[(r + j) % len(names)]
                t0 = time.perf_counter()
                models[name](x)
                times[name][r] = (time.perf_counter() - t0) * 1000
            bar.advance(task)
    return times


def summarize(times: dict[str, np.ndarray], baseline: str = "mn04") -> dict[str, dict]:
    """Median, p90, min and ratios to ``baseline`` (median / median, p90 / p90) per model, in ms."""
    base = times[baseline]
    out = {}
    for name, t in times.items():
        out[name] = {
            "median_ms": float(np.median(t)),
            "p90_ms": float(np.percentile(t, 90)),
            "min_ms": float(t.min()),
            "mean_ms": float(t.mean()),
            f"median_ratio_to_{baseline}": float(np.median(t) / np.median(base)),
            f"p90_ratio_to_{baseline}": float(np.percentile(t, 90) / np.percentile(base, 90)),
            # per-round ratio: both models timed within the same round, so shared noise cancels
            f"median_paired_ratio_to_{baseline}": float(np.median(t / base)),
            "params": None,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200, help="timed rounds (each times every model once)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs per model first")
    parser.add_argument("--models", nargs="+", default=list(MODELS), help=f"model names (default: {' '.join(MODELS)})")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "eager_latency.json", help="JSON results path")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.rounds < 1 or args.warmup < 0:
        parser.error(f"--rounds must be >= 1 and --warmup >= 0, got {args.rounds} and {args.warmup}")
    if "mn04" not in args.models:
        parser.error("--models must include mn04 (the baseline of the ratios)")

    torch.set_num_threads(1)
    models = {name: build(name) for name in args.models}
    times = measure(models, rounds=args.rounds, warmup=args.warmup, progress=not args.no_progress)
    stats = summarize(times)
    for name, model in models.items():
        stats[name]["params"] = int(sum(p.numel() for p in model.parameters()))
    info = machine_info()
    info["torch_threads"] = torch.get_num_threads()

    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 120)
    console.print(f"{info['cpu']}, {info['cores']} cores; torch {info['torch']} ({info['torch_threads']} thread); "
                  f"python {info['python']}; input {INPUT_SHAPE}; {args.rounds} interleaved rounds after {args.warmup} warm-up runs")
    table = Table(title="PyTorch eager latency, one 10 s window")
    for col in ("model", "params", "median ms", "p90 ms", "min ms", "median / mn04", "p90 / mn04", "paired ratio"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, s in stats.items():
        table.add_row(name, f"{s['params'] / 1e6:.2f} M", f"{s['median_ms']:.1f}", f"{s['p90_ms']:.1f}", f"{s['min_ms']:.1f}",
                      f"{s['median_ratio_to_mn04']:.2f}x", f"{s['p90_ratio_to_mn04']:.2f}x", f"{s['median_paired_ratio_to_mn04']:.2f}x")
    console.print(table)

    result = {
        "input_shape": list(INPUT_SHAPE),
        "rounds": args.rounds,
        "warmup": args.warmup,
        "models": stats,
        "raw_ms": {name: [round(float(v), 3) for v in t] for name, t in times.items()},
        "machine": info,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
