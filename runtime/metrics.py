"""Tagging metrics in plain numpy: average precision, mAP and top-k hits.

Why here and not sklearn: the runtime must stay light (numpy, soundfile, soxr, onnxruntime),
yet benchmarks and tests need the same numbers the AudioSet literature reports. AP follows
``sklearn.metrics.average_precision_score`` exactly (non-interpolated, ties grouped), so results
can be compared with EfficientAT's evaluation, which calls sklearn.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

__all__ = ["average_precision", "mean_average_precision", "top5_overlap", "top_k_hits"]

logger = logging.getLogger(__name__)


def _as_targets(targets: np.ndarray, name: str) -> np.ndarray:
    """Binary targets of any numeric/bool dtype -> bool; refuses values other than 0/1."""
    targets = np.asarray(targets)
    if targets.dtype == bool:
        return targets
    if not (np.issubdtype(targets.dtype, np.number)):
        raise ValueError(f"{name} must be bool or 0/1 numbers, got dtype {targets.dtype}")
    bad = ~((targets == 0) | (targets == 1))
    if bad.any():
        raise ValueError(f"{name} must hold only 0/1 (or bool); found {np.unique(targets[bad])[:5].tolist()}")
    return targets.astype(bool)


def _as_scores(scores: np.ndarray, name: str) -> np.ndarray:
    scores = np.asarray(scores)
    if not np.issubdtype(scores.dtype, np.number) or np.issubdtype(scores.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real numbers, got dtype {scores.dtype}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{name} contains NaN or infinite values; expected finite scores")
    return scores


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Non-interpolated average precision of one class.

    AP = sum_n (R_n - R_{n-1}) P_n over the distinct score thresholds, highest first, with R_0 = 0.
    Samples with equal scores enter at the same threshold (the definition and tie handling of
    ``sklearn.metrics.average_precision_score``).

    Args:
        scores: (N,) real scores, higher = more likely positive (any float/int dtype; finite).
        targets: (N,) bool (or 0/1) ground truth.

    Returns:
        AP in [0, 1] as a Python float; NaN when ``targets`` has no positive.

    Raises:
        ValueError: shapes are not (N,) and (N,), N is 0, scores are not finite, or targets not binary.
    """
    scores = _as_scores(scores, "scores")
    targets = _as_targets(targets, "targets")
    if scores.ndim != 1 or targets.ndim != 1 or scores.shape != targets.shape:
        raise ValueError(f"scores and targets must both be (N,); got scores {scores.shape}, targets {targets.shape}")
    if scores.size == 0:
        raise ValueError("scores and targets are empty; expected at least one sample")
    n_pos = int(np.count_nonzero(targets))
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores.astype(np.float64), kind="stable")
    s = scores[order]
    t = targets[order]
    # last index of every run of equal scores: the thresholds sklearn's curve has
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tps = np.cumsum(t, dtype=np.int64)[last]
    precision = tps / (last + 1.0)
    recall = tps / float(n_pos)
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def _check_matrix_pair(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = _as_scores(scores, "scores")
    targets = _as_targets(targets, "targets")
    if scores.ndim != 2 or targets.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"scores and targets must both be (N, C); got scores {scores.shape}, targets {targets.shape}")
    if scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"scores and targets are empty ({scores.shape}); expected N >= 1 samples and C >= 1 classes")
    return scores, targets


def mean_average_precision(
    scores: np.ndarray, targets: np.ndarray, classes: Sequence[int] | None = None
) -> tuple[float, np.ndarray]:
    """Mean of per-class APs (macro average, as AudioSet mAP is reported).

    Args:
        scores: (N, C) real scores (e.g. sigmoid probabilities, float32).
        targets: (N, C) bool (or 0/1) ground truth.
        classes: class indices to average over; default every class with at least one positive.
            Listed classes without positives are skipped in the mean (their AP is NaN).

    Returns:
        (mAP, per_class): mAP as a float (NaN when no selected class has a positive) and
        per_class (C,) float64 with the AP of *every* class, NaN where the class has no positive.

    Raises:
        ValueError: shapes differ or are not 2-D, scores are not finite, targets are not binary,
            or a class index is out of range or repeated.
    """
    scores, targets = _check_matrix_pair(scores, targets)
    n_classes = scores.shape[1]
    per_class = np.full(n_classes, np.nan, dtype=np.float64)
    for c in np.flatnonzero(targets.any(axis=0)):
        per_class[c] = average_precision(scores[:, c], targets[:, c])
    if classes is None:
        selected = np.flatnonzero(~np.isnan(per_class))
    else:
        selected = np.asarray(list(classes), dtype=np.int64)
        if selected.ndim != 1:
            raise ValueError(f"classes must be a flat list of class indices, got shape {selected.shape}")
        out = selected[(selected < 0) | (selected >= n_classes)]
        if out.size:
            raise ValueError(f"classes {out[:5].tolist()} are out of range for {n_classes} score columns")
        if np.unique(selected).size != selected.size:
            raise ValueError("classes contains repeated indices; each class must be listed once")
    values = per_class[selected]
    valid = values[~np.isnan(values)]
    if valid.size < values.size:
        logger.debug("mAP: %d of %d selected classes have no positives and are skipped", values.size - valid.size, values.size)
    mean = float(valid.mean()) if valid.size else float("nan")
    return mean, per_class


def top_k_hits(scores: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """Whether any positive class of each sample is among its k best-scored classes.

    Ties in score are broken by the lower class index (as ``runtime.tagging.top_tags`` ranks).

    Args:
        scores: (N, C) real scores.
        targets: (N, C) bool (or 0/1) ground truth.
        k: how many best classes count, 1 <= k <= C.

    Returns:
        (N,) bool; False for samples without any positive class.

    Raises:
        ValueError: shapes differ or are not 2-D, or k is out of range.
    """
    scores, targets = _check_matrix_pair(scores, targets)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= scores.shape[1]:
        raise ValueError(f"k must be an integer in [1, {scores.shape[1]}], got {k!r}")
    top = np.argsort(-scores.astype(np.float64), axis=1, kind="stable")[:, :k]
    return np.take_along_axis(targets, top, axis=1).any(axis=1)


def top5_overlap(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Per window, the share of the reference's top 5 classes that the candidate also ranks top 5
    (scores or logits: only the ranking counts)."""
    top_ref, top_cand = np.argsort(-reference, axis=1)[:, :5], np.argsort(-candidate, axis=1)[:, :5]
    return np.array([len(set(a) & set(b)) / 5 for a, b in zip(top_ref, top_cand)])
