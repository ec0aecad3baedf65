"""``dymn-edge bench``: latency, throughput, real-time factor and peak memory, measured side by side.

Every candidate (a model on a backend with a strategy and a thread count) runs in its own worker
process (``bench_worker``). For DyMN checkpoints the candidates include ``naive``: the EfficientAT
module exported as it is (``export/naive.py``), the route a user takes without this toolchain. The parent interleaves short chunks of runs across all workers, with a
pause between chunks so no worker's idle thread pool competes with the next, so machine noise
falls on all candidates alike and the ratios stay meaningful on a noisy machine. Ratios are
against PyTorch eager (the EfficientAT-style module) and against the naive ``grouped`` export, at
the same thread count, from the same run; and for DyMN, against the naive export and our faithful
``grouped`` export on the same backend.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dymn_edge.runtime.bundle import load_bundle
from dymn_edge.runtime.errors import DymnEdgeError
from dymn_edge.runtime.machine import machine_info
from dymn_edge.runtime.resolve import resolve_model

__all__ = ["Candidate", "run_benchmark"]

logger = logging.getLogger(__name__)

PAUSE_S = 0.05  # between chunks: lets the previous worker's thread pool go idle


@dataclass
class Candidate:
    model: str
    backend: str  # onnxruntime, openvino, fused, torch
    strategy: str  # grouped/matmul/expanded, static (mn), eager (torch), fused (fused)
    threads: int
    path: str
    temperature: float | None = None
    ms: list[float] = field(default_factory=list)
    peak_rss_mb: float | None = None
    torch_loaded: bool | None = None
    model_file: str | None = None  # which file of the bundle the backend ran (ONNX Runtime: model.onnx or model.nchwc.onnx)
    providers: list[str] | None = None  # ONNX Runtime's execution providers, best first (CUDA where onnxruntime-gpu has it)

    @property
    def label(self) -> str:
        return f"{self.model} {self.backend}/{self.strategy} {self.threads}t"

    def summary(self, window_s: float, batch: int) -> dict:
        ms = np.asarray(self.ms)
        median = float(np.median(ms))
        return {
            "model": self.model, "backend": self.backend, "strategy": self.strategy, "threads": self.threads,
            "median_ms": median, "p90_ms": float(np.percentile(ms, 90)), "min_ms": float(ms.min()),
            "windows_per_s": batch * 1000.0 / median, "real_time_factor": median / 1000.0 / (window_s * batch),
            "peak_rss_mb": self.peak_rss_mb, "torch_loaded": self.torch_loaded, "model_file": self.model_file, "providers": self.providers, "runs": len(ms),
        }


def _candidates(spec: str, backends: list[str], strategies: list[str], threads: list[int], batch: int, window_s: float, workdir: Path) -> list[Candidate]:
    """Candidates for one model: eager torch, and each backend x strategy x thread count."""
    source = resolve_model(spec)
    out: list[Candidate] = []
    if source.kind == "bundle":
        bundle = load_bundle(source.path)
        checkpoint = bundle.file("checkpoint")
        if "torch" in backends and checkpoint is not None:
            out += [Candidate(bundle.name, "torch", "eager", t, str(checkpoint), bundle.manifest.get("temperature")) for t in threads]
        runnable = [b for b in backends if b != "torch" and (b != "fused" or bundle.file("fused_weights"))]
        # An INT8 bundle keeps its FP32 source's name: "-int8" on its strategy tells the rows apart, and
        # keeps it from being taken for the FP32 "grouped" baseline.
        precision = "" if bundle.precision == "fp32" else f"-{bundle.precision}"
        out += [Candidate(bundle.name, b, "fused" if b == "fused" else bundle.strategy_for(b) + precision, t, str(bundle.path))
                for b in runnable for t in threads]
        return out
    from dymn_edge.export.onnx import export_bundle
    from dymn_edge.train.checkpoint import load_checkpoint

    loaded = load_checkpoint(source.path, expect=source.expect)
    if "torch" in backends:
        out += [Candidate(source.name, "torch", "eager", t, str(source.path), loaded.temperature) for t in threads]
    # grouped before naive: the naive bundle borrows the grouped export's manifest.
    wanted = ["static"] if loaded.config.family == "mn" else list(dict.fromkeys(["grouped", "naive", *strategies]))
    for strategy in wanted:
        dest = workdir / f"{source.name}-{strategy}"
        logger.warning("exporting %s with strategy %s for the benchmark", source.name, strategy)
        with_fused = strategy in ("grouped", "static")  # the one export per model that carries model.fused.npz
        if strategy == "naive":
            _naive_bundle(loaded, load_bundle(workdir / f"{source.name}-grouped"), dest, batch, window_s, workdir)
        else:
            export_bundle(loaded, dest, name=source.name, strategy="grouped" if strategy == "static" else strategy,
                          batch=batch, window_s=window_s, include_checkpoint=False, verify_parity=False, fused=with_fused)
        out += [Candidate(source.name, b, strategy, t, str(dest)) for b in backends if b not in ("torch", "fused") for t in threads]
        if with_fused and "fused" in backends and load_bundle(dest).file("fused_weights"):
            # One fused candidate: it reads model.fused.npz, which the DyMN and mn exports carry.
            out += [Candidate(source.name, "fused", "fused", t, str(dest)) for t in threads]
    return out


def _naive_bundle(loaded, reference, dest: Path, batch: int, window_s: float, workdir: Path) -> None:
    """The EfficientAT module exported as it is, at the benchmark's fixed input shape (export/naive.py),
    in a bundle that takes its manifest from ``reference`` (the same model's grouped export)."""
    import torch

    from dymn_edge.bench_worker import features
    from dymn_edge.export.naive import export_naive
    from dymn_edge.runtime.bundle import derived_metadata, write_bundle

    path = export_naive(loaded.model, workdir / f"{reference.name}-naive.onnx", torch.from_numpy(features(window_s, batch)))
    # It holds the ONNX model only, so the grouped export's record of its fused weights stays behind too.
    metadata = derived_metadata(reference.manifest, drop=("lint", "strategy_choice"))
    write_bundle(dest, {"model.onnx": (path, "onnx")}, {**metadata, "export_strategy": "naive"}, labels=reference.labels)


def _start(c: Candidate, window_s: float, batch: int) -> subprocess.Popen:
    spec = {"kind": "torch" if c.backend == "torch" else "bundle", "path": c.path, "backend": c.backend,
            "threads": c.threads, "temperature": c.temperature, "window_s": window_s, "batch": batch}
    proc = subprocess.Popen([sys.executable, "-m", "dymn_edge.bench_worker", json.dumps(spec)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line:
        raise DymnEdgeError(f"benchmark worker for {c.label} failed to start: {proc.stderr.read().strip().splitlines()[-1:]}")
    ready = json.loads(line)
    c.torch_loaded, c.model_file, c.providers = ready["torch_loaded"], ready.get("model_file"), ready.get("providers")
    return proc


def _ask(proc: subprocess.Popen, request: dict) -> dict:
    proc.stdin.write(json.dumps(request) + "\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def run_benchmark(
    specs: list[str],
    *,
    backends: list[str],
    strategies: list[str],
    threads: list[int],
    batch: int = 1,
    window_s: float = 10.0,
    rounds: int = 10,
    runs_per_round: int = 5,
    progress: bool = True,
) -> dict:
    """Measure every candidate side by side; returns {"machine", "settings", "results"}."""
    with tempfile.TemporaryDirectory(prefix="dymn-bench-") as tmp:
        candidates = [c for spec in specs for c in _candidates(spec, backends, strategies, threads, batch, window_s, Path(tmp))]
        if not candidates:
            raise DymnEdgeError("nothing to benchmark: no candidate for these models and backends")
        from rich.progress import Progress

        workers = []
        try:
            with Progress(transient=True, disable=not progress) as bar:
                task = bar.add_task("starting workers", total=len(candidates) + rounds * len(candidates))
                for c in candidates:
                    workers.append(_start(c, window_s, batch))
                    bar.advance(task)
                bar.update(task, description="measuring")
                for _ in range(rounds):
                    for c, proc in zip(candidates, workers):
                        c.ms += _ask(proc, {"runs": runs_per_round})["ms"]
                        time.sleep(PAUSE_S)
                        bar.advance(task)
            for c, proc in zip(candidates, workers):
                c.peak_rss_mb = _ask(proc, {"stop": True})["peak_rss_mb"]
        finally:
            for proc in workers:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
    rows = [c.summary(window_s, batch) for c in candidates]
    for row in rows:
        same = [r for r in rows if r["model"] == row["model"] and r["threads"] == row["threads"]]
        eager = next((r for r in same if r["backend"] == "torch"), None)
        grouped = next((r for r in same if r["backend"] == row["backend"] and r["strategy"] == "grouped"), None)
        naive = next((r for r in same if r["backend"] == row["backend"] and r["strategy"] == "naive"), None)
        row["speedup_vs_eager"] = eager["median_ms"] / row["median_ms"] if eager else None
        row["speedup_vs_naive"] = naive["median_ms"] / row["median_ms"] if naive else None
        row["speedup_vs_grouped"] = grouped["median_ms"] / row["median_ms"] if grouped else None
        # A quantized row against the FP32 row of the same model, backend and strategy, when both were given.
        base, _, precision = row["strategy"].partition("-")
        fp32 = next((r for r in same if r["backend"] == row["backend"] and r["strategy"] == base), None) if precision else None
        row["speedup_vs_fp32"] = fp32["median_ms"] / row["median_ms"] if fp32 else None
    settings = {"batch": batch, "window_s": window_s, "rounds": rounds, "runs_per_round": runs_per_round,
                "backends": backends, "strategies": strategies, "threads": threads, "input": "demo clip log-mel, looped to the window"}
    return {"machine": machine_info(), "settings": settings, "results": rows}
