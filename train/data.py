"""Training clips: a folder, a CSV or an AudioSet HDF5 file -> waveform crops, targets and a sampler.

Three sources, one interface (``Clips``: ids, multi-hot targets, ``load(i)`` -> 32 kHz mono):
- a folder: every audio file below it, unlabelled (pure distillation);
- a CSV with a path column (``path``/``filename``/``file``) and optionally a labels column
  (``labels``/``audioset_labels``/``label``), ``;``-separated display names or mids;
- the HDF5 layout EfficientAT and PaSST use for AudioSet: ``audio_name`` (bytes), ``mp3``
  (variable-length uint8, the encoded file) and ``target`` (``np.packbits`` of the 527 flags).

A manifest that names missing files fails listing every one of them: silently training on less
data than asked is the kind of error nobody notices until the model is worse.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from dymn_edge.runtime.audio import AUDIO_SUFFIXES, audio_files_in, decode_audio, load_audio
from dymn_edge.runtime.errors import TrainingError
from dymn_edge.runtime.frontend import SAMPLE_RATE
from dymn_edge.runtime.labels import Label, LabelSet

__all__ = [
    "AUDIO_SUFFIXES",
    "Clips",
    "CropDataset",
    "EpochSampler",
    "class_balanced_weights",
    "label_set_from_names",
    "open_clips",
]

logger = logging.getLogger(__name__)

HDF5_SUFFIXES = (".h5", ".hdf", ".hdf5")
PATH_COLUMNS = ("path", "filename", "file")
LABEL_COLUMNS = ("labels", "audioset_labels", "label")


@dataclass
class Clips:
    """An indexed set of clips with optional multi-hot targets over ``labels``."""

    ids: list[str]
    labels: LabelSet | None
    targets: np.ndarray | None  # (n, classes) float32 0/1, None when unlabelled
    source: str
    paths: list[Path] | None = None  # file sources
    hdf5: Path | None = None  # HDF5 source
    _h5: object = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, i: int) -> np.ndarray:
        """Clip ``i`` as mono float32 at 32 kHz."""
        if self.paths is not None:
            return load_audio(self.paths[i], SAMPLE_RATE)
        if self._h5 is None:  # opened lazily, once per DataLoader worker (h5py handles do not fork)
            import h5py

            self._h5 = h5py.File(self.hdf5, "r")
        data = np.asarray(self._h5["mp3"][i], dtype=np.uint8).tobytes()
        return decode_audio(data, f"{self.hdf5}[{self.ids[i]}]", SAMPLE_RATE)

    def subset(self, indices: Sequence[int]) -> "Clips":
        indices = list(indices)
        return Clips(
            ids=[self.ids[i] for i in indices],
            labels=self.labels,
            targets=None if self.targets is None else self.targets[indices],
            source=self.source,
            paths=None if self.paths is None else [self.paths[i] for i in indices],
            hdf5=self.hdf5,
        )

    def __getstate__(self):  # DataLoader workers get their own HDF5 handle
        state = dict(self.__dict__)
        state["_h5"] = None
        return state


def label_set_from_names(names: Sequence[str]) -> LabelSet:
    """A label list for fine-tuning on new classes: the distinct names, sorted."""
    return LabelSet([Label(i, "", n) for i, n in enumerate(sorted(set(names)))])


def _split_labels(text: str) -> list[str]:
    return [t.strip() for t in text.split(";") if t.strip()]


def _multi_hot(rows: list[list[str]], labels: LabelSet, source: str) -> np.ndarray:
    targets = np.zeros((len(rows), len(labels)), dtype=np.float32)
    unknown: dict[str, int] = {}
    for r, names in enumerate(rows):
        for name in names:
            try:
                targets[r, labels.find(name).index] = 1.0
            except KeyError:
                unknown[name] = unknown.get(name, 0) + 1
    if unknown:
        shown = ", ".join(f"{n!r} ({c}x)" for n, c in sorted(unknown.items())[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise TrainingError(
            f"{source}: {len(unknown)} label(s) unknown to the model's {len(labels)}-class head: {shown}{more}; "
            "use display names or mids of its label list, or `dymn-edge train finetune` for new classes"
        )
    return targets


def _missing_error(source: str, missing: list[Path]) -> TrainingError:
    shown = "\n  ".join(str(p) for p in missing[:20])
    more = f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else ""
    return TrainingError(f"{source}: {len(missing)} listed audio file(s) do not exist:\n  {shown}{more}")


def _read_csv(path: Path, labels: LabelSet | None, new_labels: bool) -> Clips:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise TrainingError(f"{path}: the CSV has no rows")
    path_col = next((c for c in PATH_COLUMNS if c in rows[0]), None)
    if path_col is None:
        raise TrainingError(f"{path}: expected a path column ({', '.join(PATH_COLUMNS)}), got {list(rows[0])}")
    label_col = next((c for c in LABEL_COLUMNS if c in rows[0]), None)
    base = path.parent
    paths = []
    for r in rows:
        p = Path(r[path_col].strip())
        if not p.is_absolute():
            # EfficientAT-style manifests name files relative to the CSV, or to an audio/ folder beside it
            p = base / p if (base / p).exists() or not (base / "audio" / p).exists() else base / "audio" / p
        paths.append(p)
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise _missing_error(str(path), missing)
    targets = None
    if label_col is not None:
        names = [_split_labels(r[label_col] or "") for r in rows]
        if new_labels:
            labels = label_set_from_names([n for ns in names for n in ns])
        if labels is not None:
            targets = _multi_hot(names, labels, str(path))
    elif new_labels:
        raise TrainingError(f"{path}: fine-tuning needs a labels column ({', '.join(LABEL_COLUMNS)})")
    ids = [str(p.relative_to(base)) if p.is_relative_to(base) else str(p) for p in paths]
    return Clips(ids=ids, labels=labels, targets=targets, source=str(path), paths=paths)


def _read_hdf5(path: Path, labels: LabelSet | None) -> Clips:
    import h5py

    with h5py.File(path, "r") as f:
        missing = [k for k in ("audio_name", "mp3", "target") if k not in f]
        if missing:
            raise TrainingError(f"{path}: not an AudioSet HDF5 file: missing dataset(s) {missing}; expected audio_name, mp3, target")
        ids = [n.decode() if isinstance(n, bytes) else str(n) for n in f["audio_name"][:]]
        packed = np.asarray(f["target"][:])
    n_classes = len(labels) if labels is not None else 527
    if packed.dtype == np.uint8 and packed.shape[1] == (n_classes + 7) // 8:
        targets = np.unpackbits(packed, axis=-1, count=n_classes).astype(np.float32)
    elif packed.shape[1] == n_classes:  # some copies store unpacked flags
        targets = packed.astype(np.float32)
    else:
        raise TrainingError(f"{path}: target has shape {packed.shape}; expected packed bits for {n_classes} classes")
    return Clips(ids=ids, labels=labels, targets=targets, source=str(path), hdf5=path)


def open_clips(spec: str | Path, labels: LabelSet | None = None, *, new_labels: bool = False) -> Clips:
    """Open a folder, CSV or HDF5 file of training clips.

    ``labels``: the model head's label list; CSV labels must be in it. ``new_labels=True`` (fine-tuning)
    builds the label list from the CSV instead.
    """
    path = Path(spec)
    if not path.exists():
        raise TrainingError(f"{path}: no such folder, CSV or HDF5 file")
    if path.is_dir():
        if new_labels:
            raise TrainingError(f"{path}: fine-tuning needs labels; pass a CSV of path and labels")
        files = audio_files_in(path)
        if not files:
            raise TrainingError(f"{path}: no audio files ({', '.join(AUDIO_SUFFIXES)}) in this folder")
        return Clips(ids=[str(p.relative_to(path)) for p in files], labels=labels, targets=None, source=str(path), paths=files)
    if path.suffix.lower() == ".csv":
        return _read_csv(path, labels, new_labels)
    if path.suffix.lower() in HDF5_SUFFIXES:
        return _read_hdf5(path, labels)
    raise TrainingError(f"{path}: expected a folder, a .csv or an HDF5 file ({', '.join(HDF5_SUFFIXES)})")


def crop_starts(n_samples: int, crop: int, hop: int) -> list[int]:
    """Start samples of a grid of crops covering a clip (one crop at 0 for clips shorter than ``crop``)."""
    if n_samples <= crop:
        return [0]
    starts = list(range(0, n_samples - crop + 1, hop))
    if starts[-1] + crop < n_samples:  # the tail gets its own crop
        starts.append(n_samples - crop)
    return starts


def fit_length(wave: np.ndarray, start: int, length: int) -> np.ndarray:
    """``wave[start:start+length]``, zero-padded at the end (as EfficientAT pads short clips)."""
    out = wave[start:start + length]
    if out.shape[0] < length:
        out = np.pad(out, (0, length - out.shape[0]))
    return np.ascontiguousarray(out, dtype=np.float32)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Per-sample randomness keyed by (seed, epoch, index): the same crop and gain whichever process,
    worker or batch split draws the sample, which makes DDP runs equal single-process runs."""
    return np.random.default_rng([seed, epoch, index])


class CropDataset(Dataset):
    """Clips -> fixed-length crops with targets and (optionally) the teacher's logits for that crop.

    ``train=True``: a random crop per draw (one of the teacher's stored crops when logits are given,
    so the distillation target matches the audio) and a random gain of up to ±``gain_db``.
    ``train=False``: the first crop (or the clip's whole grid via ``crops``).
    """

    def __init__(self, clips: Clips, crop_samples: int, *, teacher=None, train: bool = True, gain_db: float = 0.0,
                 seed: int = 0, cache: bool = False) -> None:
        self.clips, self.crop, self.teacher, self.train = clips, int(crop_samples), teacher, train
        self.gain_db, self.seed, self.epoch = float(gain_db), int(seed), 0
        self._cache: dict[int, np.ndarray] | None = {} if cache else None
        n_classes = clips.targets.shape[1] if clips.targets is not None else (teacher.num_classes if teacher is not None else 0)
        self._no_target = np.zeros(n_classes, dtype=np.float32)
        if teacher is not None:
            self._crops = teacher.crops_by_clip(clips.ids)

    def __len__(self) -> int:
        return len(self.clips)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def wave(self, i: int) -> np.ndarray:
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        w = self.clips.load(i)
        if self._cache is not None:
            self._cache[i] = w
        return w

    def __getitem__(self, i: int) -> dict:
        wave = self.wave(i)
        rng = sample_rng(self.seed, self.epoch, i)
        if self.teacher is not None:
            rows, starts = self._crops[i]
            j = int(rng.integers(len(rows))) if self.train else 0
            start, teacher = starts[j], self.teacher.logits[rows[j]]
        else:
            span = max(wave.shape[0] - self.crop, 0)
            start = int(rng.integers(span + 1)) if self.train else 0
            teacher = np.zeros(0, dtype=np.float32)
        x = fit_length(wave, start, self.crop)
        if self.train and self.gain_db > 0:  # EfficientAT's gain augmentation: whole dB in [-g, g)
            x = x * np.float32(10 ** (int(rng.integers(-int(self.gain_db), int(self.gain_db))) / 20))
        target = self.clips.targets[i] if self.clips.targets is not None else self._no_target
        return {"wave": x, "target": target, "teacher": np.asarray(teacher, dtype=np.float32), "index": i, "start": start}


def class_balanced_weights(targets: np.ndarray, offset: float = 100.0) -> np.ndarray:
    """EfficientAT's sample weights for imbalanced multi-label data: sum over a clip's labels of
    1000 / (offset + class count). Unlabelled clips get the mean weight, so they are still drawn."""
    counts = targets.sum(axis=0)
    weights = (targets * (1000.0 / (offset + counts))[None]).sum(axis=1)
    empty = weights <= 0
    if empty.all():
        return np.ones(len(targets), dtype=np.float64)
    weights[empty] = weights[~empty].mean()
    return weights.astype(np.float64)


class EpochSampler(Sampler[int]):
    """Indices for one epoch, shuffled or drawn by weight, seeded by (seed, epoch), split across ranks.

    Every rank draws the same global order; within each global batch, rank r takes its slice. The
    union of the ranks' batches is then exactly the single-process batch, and resuming needs
    only the epoch number.
    """

    def __init__(self, n: int, *, batch_size: int, weights: np.ndarray | None = None, num_samples: int | None = None,
                 seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True) -> None:
        if batch_size % world_size:
            raise TrainingError(f"batch size {batch_size} is not divisible by the {world_size} processes")
        self.n, self.batch_size, self.weights = n, batch_size, weights
        self.num_samples = num_samples or n
        self.seed, self.rank, self.world_size, self.shuffle, self.epoch = seed, rank, world_size, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def global_order(self) -> np.ndarray:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is not None:
            w = torch.as_tensor(self.weights, dtype=torch.double)
            return torch.multinomial(w, self.num_samples, replacement=True, generator=g).numpy()
        rounds = -(-self.num_samples // self.n)  # an epoch longer than the data passes over it again
        if not self.shuffle:
            return np.tile(np.arange(self.n), rounds)[: self.num_samples]
        return np.concatenate([torch.randperm(self.n, generator=g).numpy() for _ in range(rounds)])[: self.num_samples]

    def __iter__(self) -> Iterator[int]:
        order = self.global_order()
        per_rank = self.batch_size // self.world_size
        for b in range(0, len(order), self.batch_size):
            batch = order[b:b + self.batch_size]
            yield from batch[self.rank * per_rank:(self.rank + 1) * per_rank].tolist()

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        per_rank = self.batch_size // self.world_size
        return full * per_rank + min(max(rest - self.rank * per_rank, 0), per_rank)
