"""Teachers for knowledge distillation: any model the project loads, alone or averaged, online or stored.

The paper distils from an ensemble of transformers whose logits are computed once and stored;
``TeacherLogits`` is that file, keyed by clip id and crop start, so the student can be trained
on random crops and still see the teacher's view of exactly the audio it is given. For small
data an online teacher (``Teacher`` called inside the training step) saves the extra pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from dymn_edge.runtime.bundle import load_bundle
from dymn_edge.runtime.errors import TrainingError
from dymn_edge.runtime.frontend import FrontendConfig, log_mel
from dymn_edge.runtime.resolve import resolve_model

from .checkpoint import load_checkpoint
from .data import Clips, crop_starts, fit_length
from .frontend import MelSTFT

__all__ = ["Teacher", "TeacherLogits", "compute_teacher_logits", "load_teacher"]

logger = logging.getLogger(__name__)
FORMAT = "dymn-edge-teacher-logits"


class _TorchTeacher(nn.Module):
    """A checkpoint in eager PyTorch behind the frontend it was trained with (eval mode, no augmentation)."""

    def __init__(self, model: nn.Module, config: FrontendConfig) -> None:
        super().__init__()
        self.mel = MelSTFT(config).eval()
        self.model = model.eval()

    @torch.no_grad()
    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.model(self.mel(wave).unsqueeze(1))[0].float()


class _BundleTeacher:
    """An ONNX bundle through the runtime (numpy frontend + ONNX Runtime): no torch model needed."""

    def __init__(self, bundle, threads: int | None) -> None:
        from dymn_edge.runtime.backends import create_backend

        self.frontend = bundle.frontend
        self.backend = create_backend("onnxruntime", bundle, threads=threads)

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        feats = np.stack([log_mel(w, self.frontend) for w in wave.detach().cpu().numpy()])[:, None]
        fixed = self.backend.max_batch
        if fixed:  # fixed-batch exports run one clip at a time
            rows = [self.backend.infer(np.repeat(f[None], fixed, axis=0))[:1] for f in feats]
            logits = np.concatenate(rows)
        else:
            logits = self.backend.infer(feats)
        return torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32)).to(wave.device)


@dataclass
class Teacher:
    """One or more models whose logits are averaged (the paper's ensemble): waveforms (B, n) -> logits (B, C)."""

    names: list[str]
    members: list[Callable[[torch.Tensor], torch.Tensor]]
    num_classes: int

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        out = self.members[0](wave)
        for m in self.members[1:]:
            out = out + m(wave)
        return out / len(self.members)

    def to(self, device: torch.device | str) -> "Teacher":
        for m in self.members:
            if isinstance(m, nn.Module):
                m.to(device)
        return self


def _load_member(spec: str, threads: int | None):
    source = resolve_model(spec)
    if source.kind == "bundle":
        bundle = load_bundle(source.path)
        checkpoint = bundle.file("checkpoint")
        if checkpoint is not None:  # the eager model runs on the training device, GPU included
            loaded = load_checkpoint(checkpoint, temperature=bundle.manifest.get("temperature"))
            return _TorchTeacher(loaded.model, bundle.frontend), bundle.num_classes
        return _BundleTeacher(bundle, threads), bundle.num_classes
    loaded = load_checkpoint(source.path, expect=source.expect)
    return _TorchTeacher(loaded.model, FrontendConfig()), loaded.config.num_classes


def load_teacher(specs: Sequence[str], *, threads: int | None = None) -> Teacher:
    """Registry names, checkpoints or bundles; all must predict the same classes."""
    if not specs:
        raise TrainingError("no teacher given; pass --teacher MODEL (registry name, checkpoint or bundle)")
    members, counts = [], []
    for spec in specs:
        member, n = _load_member(str(spec), threads)
        members.append(member)
        counts.append(n)
    if len(set(counts)) > 1:
        raise TrainingError(f"teachers predict different class counts: {dict(zip(specs, counts))}; an ensemble needs one label set")
    return Teacher(names=[str(s) for s in specs], members=members, num_classes=counts[0])


def _clip_set_digest(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


@dataclass
class TeacherLogits:
    """Stored teacher logits: row r is clip ``clip_ids[clip_index[r]]`` cropped at ``starts[r]`` samples."""

    clip_ids: list[str]
    clip_index: np.ndarray  # (rows,) int32
    starts: np.ndarray  # (rows,) int64, in samples at sample_rate_hz
    logits: np.ndarray  # (rows, classes) float32
    crop_samples: int
    sample_rate_hz: int
    teachers: list[str]

    @property
    def num_classes(self) -> int:
        return int(self.logits.shape[1])

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        meta = {"format": FORMAT, "version": 1, "teachers": self.teachers, "crop_samples": self.crop_samples,
                "sample_rate_hz": self.sample_rate_hz, "clip_set_sha256": _clip_set_digest(self.clip_ids)}
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:  # np.savez would append .npz to a name without it
            np.savez_compressed(f, meta=json.dumps(meta), clip_ids=np.array(self.clip_ids), clip_index=self.clip_index,
                                starts=self.starts, logits=self.logits)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TeacherLogits":
        path = Path(path)
        if not path.is_file():
            raise TrainingError(f"{path}: no such teacher-logits file; make one with `dymn-edge train teacher-logits`")
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("format") != FORMAT:
                    raise TrainingError(f"{path}: not a teacher-logits file (format {meta.get('format')!r})")
                return cls(clip_ids=[str(c) for c in z["clip_ids"]], clip_index=z["clip_index"], starts=z["starts"],
                           logits=z["logits"].astype(np.float32), crop_samples=int(meta["crop_samples"]),
                           sample_rate_hz=int(meta["sample_rate_hz"]), teachers=list(meta["teachers"]))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # EOFError: an empty file
            raise TrainingError(f"{path}: unreadable teacher-logits file ({type(e).__name__}: {e})") from e

    def check(self, clips: Clips, num_classes: int, crop_samples: int, source: str = "teacher logits") -> None:
        """Refuse logits made for another class count, crop length or clip set: they would train silently wrong."""
        if self.num_classes != num_classes:
            raise TrainingError(f"{source}: logits have {self.num_classes} classes but the student predicts {num_classes}")
        if self.crop_samples != crop_samples:
            raise TrainingError(f"{source}: logits are for {self.crop_samples / self.sample_rate_hz:g} s crops, "
                                f"training uses {crop_samples / self.sample_rate_hz:g} s; pass --clip-seconds to match or recompute them")
        known = set(self.clip_ids)
        missing = [c for c in clips.ids if c not in known]
        if missing:
            shown = ", ".join(missing[:5])
            raise TrainingError(f"{source}: no logits for {len(missing)} of {len(clips)} training clips ({shown}"
                                f"{', ...' if len(missing) > 5 else ''}); they were computed for another clip set")

    def crops_by_clip(self, ids: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each id: (rows into ``logits``, crop starts)."""
        pos = {c: i for i, c in enumerate(self.clip_ids)}
        order = np.argsort(self.clip_index, kind="stable")
        sorted_idx = self.clip_index[order]
        out = []
        for cid in ids:
            k = pos[cid]
            lo, hi = np.searchsorted(sorted_idx, k, "left"), np.searchsorted(sorted_idx, k, "right")
            rows = order[lo:hi]
            out.append((rows, self.starts[rows]))
        return out


def compute_teacher_logits(teacher: Teacher, clips: Clips, *, crop_samples: int, hop_samples: int, batch_size: int = 16,
                           device: str = "cpu", progress: Callable[[int, int], None] | None = None) -> TeacherLogits:
    """Run the teacher on a grid of crops of every clip (crop length = the student's training length)."""
    teacher.to(device)
    clip_index, starts, logits = [], [], []
    pending: list[np.ndarray] = []

    def flush() -> None:
        if pending:
            with torch.no_grad():
                out = teacher(torch.from_numpy(np.stack(pending)).to(device))
            logits.append(out.float().cpu().numpy())
            pending.clear()

    for i in range(len(clips)):
        wave = clips.load(i)
        for s in crop_starts(wave.shape[0], crop_samples, hop_samples):
            clip_index.append(i)
            starts.append(s)
            pending.append(fit_length(wave, s, crop_samples))
            if len(pending) == batch_size:
                flush()
        if progress is not None:
            progress(i + 1, len(clips))
    flush()
    return TeacherLogits(clip_ids=list(clips.ids), clip_index=np.asarray(clip_index, dtype=np.int32),
                         starts=np.asarray(starts, dtype=np.int64), logits=np.concatenate(logits).astype(np.float32),
                         crop_samples=int(crop_samples), sample_rate_hz=FrontendConfig().sample_rate_hz, teachers=list(teacher.names))
