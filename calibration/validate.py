"""Is the quantized model still accurate? Reference vs candidates on real audio, with gates CI can enforce.

With labels: mAP over the labelled classes, per-class AP and top-k hit rates, for the reference and
each candidate. Always: fidelity to the reference (top-1 and top-5 agreement, mAP of the candidate
against the reference's thresholded outputs, mean Bernoulli KL divergence, worst logit error,
per-class score deltas) and latency on this machine. ``Gate``s turn any of these into pass/fail.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dymn_edge.runtime.backends import create_backend
from dymn_edge.runtime.bundle import Bundle, load_bundle
from dymn_edge.runtime.errors import CalibrationError
from dymn_edge.runtime.metrics import average_precision, top5_overlap
from dymn_edge.runtime.tagging import sigmoid

from .dataset import FeatureSet

__all__ = ["GATES", "Gate", "ModelRun", "compare", "labelled_metrics", "parse_gate", "run_model"]

FIDELITY_THRESHOLD = 0.3  # a reference score at or above this counts as a positive for "map_vs_reference"

# gate name -> (direction, what it measures); "max" gates fail above the threshold, "min" gates below it.
GATES = {
    "map_drop": ("max", "reference mAP minus candidate mAP over the labelled classes"),
    "top5_hit_drop": ("max", "reference minus candidate share of windows with a true class in the top 5"),
    "top1_agreement": ("min", "share of windows whose top-1 class equals the reference's"),
    "top5_agreement": ("min", "mean overlap of the top-5 sets with the reference's (0-1)"),
    "map_vs_reference": ("min", "mAP of the candidate against the reference's outputs thresholded at 0.3"),
    "mean_kl": ("max", "mean Bernoulli KL divergence from the reference, per class and window"),
    "max_logit_error": ("max", "largest |logit difference| from the reference"),
    "latency_ratio": ("max", "candidate median latency / reference median latency"),
}


@dataclass(frozen=True)
class Gate:
    name: str
    threshold: float

    def check(self, value: float | None) -> bool:
        if value is None or not np.isfinite(value):
            return False
        return value <= self.threshold if GATES[self.name][0] == "max" else value >= self.threshold


def parse_gate(text: str) -> Gate:
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or name not in GATES:
        raise CalibrationError(f"gate {text!r}: expected NAME=VALUE with NAME one of {', '.join(GATES)}")
    try:
        return Gate(name, float(value))
    except ValueError:
        raise CalibrationError(f"gate {text!r}: {value!r} is not a number") from None


@dataclass
class ModelRun:
    name: str
    path: str
    backend: str
    precision: str
    logits: np.ndarray  # (windows, classes)
    latency_ms: list[float] = field(default_factory=list)
    scope: str | None = None  # an INT8 bundle's quantization scope (pointwise / all), from its manifest

    @property
    def scores(self) -> np.ndarray:
        return sigmoid(self.logits)

    @property
    def latency_median_ms(self) -> float:
        return float(np.median(self.latency_ms)) if self.latency_ms else float("nan")


def _default_backend(bundle: Bundle) -> str:
    return "onnxruntime" if bundle.file("onnx") is not None else "openvino"


def run_model(spec: str | Path | Bundle, data: FeatureSet, *, backend: str | None = None, threads: int = 1, timed_runs: int = 20) -> ModelRun:
    """Logits of a bundle on every window, plus median latency over ``timed_runs`` runs of the first full window."""
    bundle = spec if isinstance(spec, Bundle) else load_bundle(spec)
    backend = backend or _default_backend(bundle)
    engine = create_backend(backend, bundle, threads=threads)
    fixed = engine.max_batch if engine.max_batch and engine.max_batch > 1 else None

    def infer(x: np.ndarray) -> np.ndarray:
        return np.asarray(engine.infer(np.repeat(x, fixed, axis=0) if fixed else x))[:1]

    logits = np.concatenate([infer(x) for x in data.features]).astype(np.float32)
    probe = max(data.features, key=lambda f: f.shape[-1])
    for _ in range(3 if timed_runs else 0):  # warm-up only when timing follows
        infer(probe)
    latencies = []
    for _ in range(timed_runs):
        start = time.perf_counter()
        infer(probe)
        latencies.append((time.perf_counter() - start) * 1e3)
    # The folder tells bundles of one model apart (mn04_as FP32 / INT8 for each backend ...).
    scope = (bundle.manifest.get("quantization") or {}).get("scope")
    return ModelRun(bundle.path.name, str(bundle.path), backend, bundle.precision, logits, latencies, scope)


def precision_label(run: dict) -> str:
    """"int8 (pointwise)" for a quantized model whose scope is known, else its precision."""
    return f"{run['precision']} ({run['scope']})" if run.get("scope") else run["precision"]


def labelled_metrics(scores: np.ndarray, targets: np.ndarray) -> dict:
    """mAP over classes with at least one positive window, their APs, and top-1/top-5 hit rates."""
    classes = np.flatnonzero(targets.sum(axis=0) > 0)
    aps = {int(c): float(average_precision(scores[:, c], targets[:, c])) for c in classes}
    labelled = targets.sum(axis=1) > 0
    order = np.argsort(-scores, axis=1)
    hits = {k: float(np.mean([targets[i, order[i, :k]].any() for i in np.flatnonzero(labelled)])) for k in (1, 5)}
    return {"map": float(np.mean(list(aps.values()))) if aps else None, "classes": len(aps), "per_class_ap": aps,
            "top1_hit": hits[1], "top5_hit": hits[5], "labelled_windows": int(labelled.sum())}


def _bernoulli_kl(p: np.ndarray, q: np.ndarray) -> float:
    eps = 1e-7
    p, q = np.clip(p, eps, 1 - eps), np.clip(q, eps, 1 - eps)
    return float(np.mean(p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))))


def fidelity(reference: ModelRun, candidate: ModelRun, threshold: float = FIDELITY_THRESHOLD) -> dict:
    ref, cand = reference.scores, candidate.scores
    overlap = top5_overlap(ref, cand)
    positives = (ref >= threshold).astype(np.float32)
    classes = np.flatnonzero(positives.sum(axis=0) > 0)
    aps = [average_precision(cand[:, c], positives[:, c]) for c in classes]
    return {
        "top1_agreement": float(np.mean(np.argmax(ref, axis=1) == np.argmax(cand, axis=1))),
        "top5_agreement": float(np.mean(overlap)),
        "top5_identical": float(np.mean([o == 1.0 for o in overlap])),
        "map_vs_reference": float(np.mean(aps)) if aps else None,
        "mean_kl": _bernoulli_kl(ref, cand),
        "max_logit_error": float(np.abs(reference.logits - candidate.logits).max()),
        "logit_errors": (candidate.logits - reference.logits).ravel(),
        "per_class_mean_delta": (cand - ref).mean(axis=0),
    }


def compare(reference: ModelRun, candidates: list[ModelRun], data: FeatureSet, gates: list[Gate]) -> dict:
    """Every metric for the reference and each candidate, and each candidate's gate results."""
    for c in candidates:
        if c.logits.shape[1] != reference.logits.shape[1]:
            raise CalibrationError(f"{c.path}: {c.logits.shape[1]} classes; the reference {reference.path} has {reference.logits.shape[1]}")
    ref_labelled = labelled_metrics(reference.scores, data.targets) if data.targets is not None else None
    out = {"reference": {"name": reference.name, "path": reference.path, "backend": reference.backend, "precision": reference.precision,
                         "scope": reference.scope, "latency_ms": reference.latency_median_ms, "labelled": ref_labelled},
           "candidates": []}
    for c in candidates:
        fid = fidelity(reference, c)
        labelled = labelled_metrics(c.scores, data.targets) if data.targets is not None else None
        values = {k: v for k, v in fid.items() if not isinstance(v, np.ndarray)}
        values["latency_ratio"] = c.latency_median_ms / reference.latency_median_ms
        if labelled and ref_labelled and labelled["map"] is not None:
            values["map_drop"] = ref_labelled["map"] - labelled["map"]
            values["top5_hit_drop"] = ref_labelled["top5_hit"] - labelled["top5_hit"]
        results = []
        for gate in gates:
            value = values.get(gate.name)
            if value is None and gate.name in ("map_drop", "top5_hit_drop"):
                raise CalibrationError(f"gate {gate.name} needs labels (--labels CSV, or a CSV with a labels column as --audio)")
            results.append({"gate": gate.name, "threshold": gate.threshold, "value": value, "passed": gate.check(value),
                            "direction": "at most" if GATES[gate.name][0] == "max" else "at least"})
        out["candidates"].append({"name": c.name, "path": c.path, "backend": c.backend, "precision": c.precision, "scope": c.scope,
                                  "latency_ms": c.latency_median_ms, "labelled": labelled, "fidelity": values, "gates": results,
                                  "passed": all(r["passed"] for r in results), "_arrays": fid})
    return out
