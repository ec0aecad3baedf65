"""Score post-processing before event detection: which classes to watch, smoothing, thresholds.

Smoothing trades reaction time for stability: ``ema`` (exponential moving average over
windows) and ``median`` (running median of the last few windows) both suppress single-window
spikes; ``none`` reacts at once.
"""

from __future__ import annotations

import collections
import csv
import difflib
import json
from pathlib import Path

import numpy as np

from ..errors import DymnEdgeError
from ..labels import LabelSet

__all__ = ["SMOOTHING", "Smoother", "load_thresholds", "resolve_labels"]

SMOOTHING = ("none", "ema", "median")


class Smoother:
    def __init__(self, method: str = "none", *, alpha: float = 0.5, size: int = 3) -> None:
        if method not in SMOOTHING:
            raise DymnEdgeError(f"unknown smoothing {method!r}; expected one of {', '.join(SMOOTHING)}")
        if not 0 < alpha <= 1 or size < 1:
            raise DymnEdgeError(f"smoothing needs 0 < alpha <= 1 and size >= 1, got alpha={alpha}, size={size}")
        self.method, self.alpha = method, alpha
        self._state: np.ndarray | None = None
        self._history: collections.deque = collections.deque(maxlen=size)

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        if self.method == "ema":
            self._state = scores.copy() if self._state is None else self.alpha * scores + (1 - self.alpha) * self._state
            return self._state
        if self.method == "median":
            self._history.append(scores)
            return np.median(np.stack(self._history), axis=0)
        return scores


def resolve_labels(names: list[str], labels: LabelSet) -> list[int]:
    """Class indices for display names (exact, then case-insensitive), mids or indices."""
    by_name = {name: i for i, name in enumerate(labels.names)}
    by_lower = {name.lower(): i for i, name in enumerate(labels.names)}
    by_mid = {label.mid: label.index for label in labels if label.mid}
    out = []
    for name in names:
        key = name.strip()
        index = by_name.get(key, by_lower.get(key.lower(), by_mid.get(key)))
        if index is None and key.isdigit() and int(key) < len(labels):
            index = int(key)
        if index is None:
            close = difflib.get_close_matches(key, labels.names, n=3, cutoff=0.6)
            close += [n for n in labels.names if key.lower() in n.lower() and n not in close][: 5 - len(close)]
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ": not a class of this model"
            raise DymnEdgeError(f"unknown label {name!r}{hint}")
        out.append(index)
    return list(dict.fromkeys(out))


def load_thresholds(path: str | Path, labels: LabelSet, default: float) -> np.ndarray:
    """Per-class onset thresholds from a CSV (``label,threshold``) or JSON ({label: threshold}) file.

    Classes the file does not name keep ``default``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DymnEdgeError(f"{path}: cannot read thresholds file ({e.strerror})") from e
    if path.suffix.lower() == ".json":
        try:
            pairs = list(json.loads(text).items())
        except (json.JSONDecodeError, AttributeError) as e:
            raise DymnEdgeError(f"{path}: expected a JSON object {{label: threshold}} ({e})") from e
    else:
        rows = [r for r in csv.reader(text.splitlines()) if r and not r[0].startswith("#")]
        if rows and rows[0][-1].strip().lower() == "threshold":
            rows = rows[1:]
        bad = [r for r in rows if len(r) != 2]
        if bad:
            raise DymnEdgeError(f"{path}: expected rows of 'label,threshold' (quote labels with commas), got {bad[0]}")
        pairs = [(r[0], r[1]) for r in rows]
    thresholds = np.full(len(labels), default, dtype=np.float32)
    for name, value in pairs:
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise DymnEdgeError(f"{path}: threshold for {name!r} is {value!r}, expected a number in (0, 1)") from None
        if not 0 < value < 1:
            raise DymnEdgeError(f"{path}: threshold for {name!r} is {value}, expected a number in (0, 1)")
        thresholds[resolve_labels([str(name)], labels)[0]] = value
    return thresholds
