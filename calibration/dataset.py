"""Calibration and validation audio: files -> windows -> features, with the runtime's own frontend.

Calibration must see exactly what deployment sees, so features come from ``runtime.frontend``
on windows of the bundle's length. The input is a folder (every audio file below it) or a CSV
with a path column (``path`` or ``filename``) and optionally a labels column (``labels`` or
``audioset_labels``, ``;``-separated AudioSet display names or mids). With labels and a
``samples`` budget, windows are drawn class by class in turn (class-balanced); without labels,
evenly across files. Features are cached per file (keyed by its sha256, the frontend and the
window), so repeated runs on the same audio skip decoding and the STFT.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dymn_edge.runtime.audio import AUDIO_SUFFIXES, audio_files_in, seconds_to_samples
from dymn_edge.runtime.checksum import sha256_file
from dymn_edge.runtime.errors import AudioFormatError, CalibrationError
from dymn_edge.runtime.frontend import FrontendConfig, log_mel
from dymn_edge.runtime.labels import LabelSet
from dymn_edge.runtime.registry import cache_dir
from dymn_edge.runtime.tagging import file_blocks

__all__ = ["AUDIO_SUFFIXES", "MIN_SAMPLES", "AudioList", "FeatureSet", "build_feature_set", "list_audio"]

logger = logging.getLogger(__name__)

MIN_SAMPLES = 16  # fewer windows than this give ranges that one loud clip dominates
_PATH_COLUMNS = ("path", "filename", "file")
_LABEL_COLUMNS = ("labels", "audioset_labels")


@dataclass
class AudioList:
    files: list[Path]
    labels: list[list[str]] | None  # per file, when the CSV has a labels column


@dataclass
class FeatureSet:
    features: list[np.ndarray]  # each (1, 1, n_mels, frames) float32
    windows: list[tuple[str, float]]  # (file, start second) of each feature
    targets: np.ndarray | None  # (n, classes) 0/1 from the file labels, or None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.features)

    @property
    def files(self) -> list[str]:
        return list(dict.fromkeys(w[0] for w in self.windows))


def list_audio(spec: str | Path, labels_csv: str | Path | None = None) -> AudioList:
    """A folder (recursively, sorted) or a CSV of audio files.

    ``labels_csv``: a CSV of file and labels for the files of folder ``spec`` (relative paths are
    resolved against ``spec``); only the files it lists are used.
    """
    spec = Path(spec)
    if labels_csv is not None:
        listing = list_audio(labels_csv)
        if listing.labels is None:
            raise CalibrationError(f"{labels_csv}: no labels column (one of {', '.join(_LABEL_COLUMNS)})")
        rows = list(csv.DictReader(Path(labels_csv).read_text(encoding="utf-8").splitlines()))
        path_col = next(c for c in _PATH_COLUMNS if c in rows[0])
        files = [Path(r[path_col].strip()) if Path(r[path_col].strip()).is_absolute() else spec / r[path_col].strip() for r in rows]
        return AudioList(files, listing.labels)
    if spec.is_dir():
        files = audio_files_in(spec)
        if not files:
            raise CalibrationError(f"{spec}: no audio files ({', '.join(AUDIO_SUFFIXES)}) in this folder")
        return AudioList(files, None)
    if not spec.is_file():
        raise CalibrationError(f"{spec}: no such folder or CSV file")
    try:
        rows = list(csv.DictReader(spec.read_text(encoding="utf-8").splitlines()))
    except (UnicodeDecodeError, csv.Error) as e:
        raise CalibrationError(f"{spec}: not a readable CSV ({e})") from e
    columns = rows[0].keys() if rows else []
    path_col = next((c for c in _PATH_COLUMNS if c in columns), None)
    if path_col is None:
        raise CalibrationError(f"{spec}: a CSV needs a column named one of {', '.join(_PATH_COLUMNS)}; it has {', '.join(columns) or 'none'}")
    label_col = next((c for c in _LABEL_COLUMNS if c in columns), None)
    files, labels = [], []
    for row in rows:
        name = row[path_col].strip()
        candidates = [Path(name)] if Path(name).is_absolute() else [spec.parent / name, spec.parent / "audio" / name]
        files.append(next((c for c in candidates if c.exists()), candidates[0]))
        if label_col:
            labels.append([x.strip() for x in (row[label_col] or "").split(";") if x.strip()])
    return AudioList(files, labels if label_col else None)


def _cache_key(path: Path, config: FrontendConfig, window_s: float) -> str:
    digest = hashlib.sha256()
    digest.update(sha256_file(path).encode())
    digest.update(repr(sorted(config.to_dict().items())).encode())
    digest.update(f"{window_s:.6f}".encode())
    return digest.hexdigest()[:32]


def _file_features(path: Path, config: FrontendConfig, window_s: float, cache: Path | None) -> tuple[list[np.ndarray], list[float], bool]:
    """Features of every window of a file (the last one may be shorter), start seconds, and whether it is (nearly) constant."""
    key = _cache_key(path, config, window_s) if cache else None
    if key and (cache / f"{key}.npz").exists():
        with np.load(cache / f"{key}.npz") as data:
            starts = list(data["starts"])
            return [data[f"f{i}"] for i in range(len(starts))], starts, bool(data["constant"])
    features, starts, constant = _stream_features(path, config, window_s)
    if key:
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(cache / f"{key}.npz", starts=np.asarray(starts), constant=constant, **{f"f{i}": f for i, f in enumerate(features)})
    return features, starts, constant


def _stream_features(path: Path, config: FrontendConfig, window_s: float) -> tuple[list[np.ndarray], list[float], bool]:
    """Back-to-back windows of a file, decoded and resampled a second at a time (``tagging.file_blocks``,
    bit-identical to ``load_audio``), so a long recording never sits in memory whole: decoded at
    once, an hour at 32 kHz is 460 MB of samples before its features. A last, shorter piece is kept
    if it spans at least one analysis frame. Not ``tagging.stream_windows``: that one ends its last
    window at the file's end, overlapping the one before, and calibration wants disjoint windows."""
    rate = config.sample_rate_hz
    window = seconds_to_samples(window_s, rate)
    features, starts = [], []
    held, start, total = np.zeros(0, np.float32), 0, 0  # held: samples [start, start + len(held))
    moments = np.zeros(2)  # sum and sum of squares (float64), for the silent-or-constant check

    def emit(piece: np.ndarray) -> None:
        features.append(log_mel(piece, config))
        starts.append(start / rate)

    for block in file_blocks(path, rate):
        total += len(block)
        moments += (block.sum(dtype=np.float64), np.square(block, dtype=np.float64).sum())
        held = np.concatenate([held, block])
        while len(held) >= window:
            emit(held[:window])
            held, start = held[window:], start + window
    if total == 0:
        raise AudioFormatError(f"{path}: contains no audio samples")
    if len(held) >= config.min_samples:
        emit(held)
    mean = moments[0] / total
    constant = float(np.sqrt(max(moments[1] / total - mean * mean, 0.0))) < 1e-4
    return features, starts, constant


def _targets(names_per_file: list[list[str]], labels: LabelSet) -> np.ndarray:
    unknown = sorted({n for names in names_per_file for n in names if _find(labels, n) is None})
    if unknown:
        raise CalibrationError(f"labels not in the model's ontology: {', '.join(repr(u) for u in unknown[:20])}"
                               + (f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""))
    out = np.zeros((len(names_per_file), len(labels)), dtype=np.float32)
    for i, names in enumerate(names_per_file):
        for n in names:
            out[i, _find(labels, n)] = 1.0
    return out


def _find(labels: LabelSet, key: str) -> int | None:
    try:
        return labels.find(key).index
    except KeyError:
        return None


def _balanced(file_targets: np.ndarray | None, per_file: dict[int, list[int]], budget: int, rng: random.Random) -> list[int]:
    """Window indices: class by class in turn when labels are known, else round-robin over files."""
    for windows in per_file.values():
        rng.shuffle(windows)
    if file_targets is None or not file_targets.any():
        files = list(per_file)
        rng.shuffle(files)
        chosen, depth = [], 0
        while len(chosen) < budget and any(len(per_file[f]) > depth for f in files):
            chosen += [per_file[f][depth] for f in files if len(per_file[f]) > depth][: budget - len(chosen)]
            depth += 1
        return chosen
    by_class: dict[int, list[int]] = {}
    for f in per_file:
        for c in np.flatnonzero(file_targets[f]):
            by_class.setdefault(int(c), []).append(f)
    for files in by_class.values():
        rng.shuffle(files)
    used: set[int] = set()
    chosen, cursor = [], {c: 0 for c in by_class}
    classes = sorted(by_class)
    while len(chosen) < budget:
        progress = False
        rng.shuffle(classes)  # a budget smaller than a round must not favour low class indices
        for c in classes:
            files = by_class[c]
            while cursor[c] < len(files) and not [w for w in per_file[files[cursor[c]]] if w not in used]:
                cursor[c] += 1
            if cursor[c] >= len(files):
                continue
            window = next(w for w in per_file[files[cursor[c]]] if w not in used)
            used.add(window)
            chosen.append(window)
            cursor[c] = (cursor[c] + 1) % len(files) if len(files) > 1 else cursor[c]
            progress = True
            if len(chosen) >= budget:
                break
        if not progress:
            break
    return chosen


def build_feature_set(
    spec: str | Path,
    *,
    config: FrontendConfig = FrontendConfig(),
    window_s: float = 10.0,
    labels: LabelSet | None = None,
    labels_csv: str | Path | None = None,
    samples: int | None = None,
    seed: int = 0,
    min_samples: int = MIN_SAMPLES,
    use_cache: bool = True,
    progress: bool = True,
) -> FeatureSet:
    """Decode, window and featurize ``spec`` (folder or CSV); see the module docstring.

    Raises:
        CalibrationError: no usable audio, fewer than ``min_samples`` windows, or labels outside ``labels``.
    """
    listing = list_audio(spec, labels_csv)
    file_targets = _targets(listing.labels, labels) if listing.labels is not None and labels is not None else None
    cache = cache_dir() / "features" if use_cache else None
    skipped: list[tuple[str, str]] = []
    warnings: list[str] = []
    features: list[np.ndarray] = []
    windows: list[tuple[str, float]] = []
    owner: list[int] = []
    from rich.progress import Progress

    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("computing features", total=len(listing.files))
        for i, path in enumerate(listing.files):
            try:
                feats, starts, constant = _file_features(path, config, window_s, cache)
            except (AudioFormatError, FileNotFoundError, OSError) as e:
                # An OSError from opening the file (hashing it for the cache comes first) carries its
                # reason in strerror; str() would end in the quoted path alone.
                skipped.append((str(path), e.strerror if isinstance(e, OSError) and e.strerror else str(e).split(": ", 1)[-1]))
                bar.advance(task)
                continue
            if constant:
                warnings.append(f"{path}: silent or constant audio; it adds nothing useful to calibration")
            features += [f[None, None] for f in feats]
            windows += [(str(path), s) for s in starts]
            owner += [i] * len(feats)
            bar.advance(task)
    for path, reason in skipped:
        logger.warning("skipped %s: %s", path, reason)
    if features and len(warnings) == len({w[0] for w in windows}):
        warnings.append("every file is silent or constant: calibration ranges will be meaningless")
    for w in warnings:
        logger.warning("%s", w)
    if len(features) < min_samples:
        raise CalibrationError(
            f"{spec}: {len(features)} usable window(s) of {window_s:g} s from {len(listing.files) - len(skipped)} file(s); "
            f"need at least {min_samples} (add audio or shorten the window)" + (f"; {len(skipped)} file(s) skipped" if skipped else ""))
    chosen = list(range(len(features)))
    if samples is not None and samples < len(features):
        if samples < min_samples:
            raise CalibrationError(f"--samples {samples} is too few; need at least {min_samples}")
        per_file: dict[int, list[int]] = {}
        for w, f in enumerate(owner):
            per_file.setdefault(f, []).append(w)
        chosen = sorted(_balanced(file_targets, per_file, samples, random.Random(seed)))
    targets = file_targets[[owner[w] for w in chosen]] if file_targets is not None else None
    return FeatureSet([features[w] for w in chosen], [windows[w] for w in chosen], targets, skipped, warnings)
