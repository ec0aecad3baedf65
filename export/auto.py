"""``--strategy auto``: per backend, the fastest DyMN export strategy that passed parity, measured here.

Which strategy wins depends on the backend and the CPU (ONNX Runtime cannot pre-pack run-time
depthwise kernels, OpenVINO can; wider models shift the balance), so it is measured rather than
assumed. Every parity-checked candidate runs on every installed backend in interleaved rounds (machine
noise falls on all alike) and the lowest median wins. The timings go into the manifest, so the choice
can be audited and redone on the target device.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from dymn_edge.runtime.errors import BackendUnavailableError

__all__ = ["AUTO_BACKENDS", "interleaved_medians", "measure_strategies"]

logger = logging.getLogger(__name__)

AUTO_BACKENDS = ("onnxruntime", "openvino")


def _runner(backend: str, path: Path, threads: int, frames: int) -> tuple[object, str]:
    """(infer, where it runs): the device the timings describe, as the runtime would open it here."""
    if backend == "onnxruntime":
        from dymn_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend

        ort = OnnxRuntimeBackend(path, threads=threads)
        return ort.infer, ort.providers[0]
    from dymn_edge.runtime.backends.openvino import OpenVinoBackend

    ov = OpenVinoBackend(path, threads=threads, static_frames=frames)
    return ov.infer, ov.device


def measure_strategies(
    models: dict[str, Path],
    features: np.ndarray,
    *,
    backends: tuple[str, ...] = AUTO_BACKENDS,
    threads: int = 1,
    rounds: int = 5,
    runs_per_round: int = 4,
    own: dict[str, dict[str, Path]] | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Median latency (ms) of each strategy's ONNX file on each installed backend, {backend: {strategy: ms}},
    and where each backend ran them, {backend: device}: on a machine with onnxruntime-gpu ONNX Runtime
    runs (and is timed) on its CUDA provider, as the runtime would run the bundle there.

    ``own``: {backend: {strategy: file}} where a backend runs another form of that strategy's graph
    (ONNX Runtime's model.nchwc.onnx). Backends that are not installed are skipped (logged); at
    least ONNX Runtime always is.
    """
    runners: dict[tuple[str, str], object] = {}
    devices: dict[str, str] = {}
    for backend in backends:
        for strategy, path in models.items():
            path = (own or {}).get(backend, {}).get(strategy, path)
            try:
                runners[backend, strategy], devices[backend] = _runner(backend, path, threads, features.shape[-1])
            except BackendUnavailableError as e:
                logger.info("auto strategy: skipping %s (%s)", backend, e)
                break
    result: dict[str, dict[str, float]] = {}
    for (backend, strategy), ms in interleaved_medians(runners, features, rounds=rounds, runs_per_round=runs_per_round).items():
        result.setdefault(backend, {})[strategy] = round(ms, 3)
    return result, devices


def interleaved_medians(runners: dict, features: np.ndarray, *, rounds: int, runs_per_round: int, warmup: int = 2) -> dict:
    """{key: median ms} of ``run(features)`` for every runner, timed in interleaved rounds.

    Interleaving spreads machine noise over all candidates alike, so their ratios hold on a noisy machine.
    """
    times: dict = {key: [] for key in runners}
    for run in runners.values():  # warm-up: first runs allocate and pick kernels
        for _ in range(warmup):
            run(features)
    for _ in range(rounds):
        for key, run in runners.items():
            for _ in range(runs_per_round):
                start = time.perf_counter()
                run(features)
                times[key].append((time.perf_counter() - start) * 1e3)
    return {key: float(np.median(ms)) for key, ms in times.items()}


def fastest(timings: dict[str, dict[str, float]]) -> dict[str, str]:
    """{backend: strategy with the lowest median}."""
    return {backend: min(by_strategy, key=by_strategy.get) for backend, by_strategy in timings.items()}
