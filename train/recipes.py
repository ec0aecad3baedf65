"""What `dymn-edge train` runs: distillation into a DyMN student, and fine-tuning on new labels.

Each function assembles the pieces (clips, teacher, student, warm start, trainer) and returns
the trainer after ``fit``; the CLI only parses options.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from dymn_edge.runtime.errors import TrainingError
from dymn_edge.runtime.labels import LabelSet, audioset_labels, read_labels, write_labels
from dymn_edge.runtime.resolve import resolve_model

from .checkpoint import load_checkpoint
from .data import Clips, fit_length, open_clips
from .frontend import MelSTFT
from .models import DyMNConfig, build_model, create_model
from .teacher import TeacherLogits, compute_teacher_logits, load_teacher
from .trainer import TrainConfig, Trainer
from .warm_start import warm_start_from_mn

__all__ = ["build_student", "distill", "finetune", "split_clips", "teacher_logits"]

logger = logging.getLogger(__name__)


def split_clips(clips: Clips, val: str | Path | None, val_fraction: float, seed: int, labels: LabelSet | None) -> tuple[Clips, Clips | None]:
    """A separate validation source, or a seeded random hold-out of ``val_fraction`` of the clips."""
    if val is not None:
        held = open_clips(val, labels)
        overlap = set(held.ids) & set(clips.ids) if held.source != clips.source else set(held.ids)
        if held.paths is not None and clips.paths is not None:
            overlap = {str(p.resolve()) for p in held.paths} & {str(p.resolve()) for p in clips.paths}
        if overlap:
            raise TrainingError(f"{val}: {len(overlap)} validation clip(s) are also training clips (e.g. {sorted(overlap)[0]}); "
                                "hold-out data must be disjoint")
        return clips, held
    if val_fraction <= 0:
        return clips, None
    if not 0 < val_fraction < 1:
        raise TrainingError(f"validation fraction must be in (0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(clips))
    n_val = max(1, int(round(len(clips) * val_fraction)))
    return clips.subset(sorted(order[n_val:])), clips.subset(sorted(order[:n_val]))


def build_student(spec: str, num_classes: int, **overrides) -> nn.Module:
    """``dymn04``/``dymn10``/``dymn20`` or a bare width such as ``0.6``."""
    try:
        width = float(spec)
    except ValueError:
        if not spec.startswith("dymn"):
            raise TrainingError(f"student {spec!r}: expected dymn04, dymn10, dymn20 or a width such as 0.4") from None
        try:
            return create_model(spec, num_classes=num_classes, **overrides)
        except ValueError as e:
            raise TrainingError(f"student {spec!r}: {e}") from None
    if width <= 0:
        raise TrainingError(f"student width must be positive, got {width}")
    return build_model(DyMNConfig(width_mult=width, num_classes=num_classes, **overrides))


def _sample_mels(clips: Clips, crop_samples: int, n: int = 32) -> torch.Tensor:
    picks = np.linspace(0, len(clips) - 1, min(n, len(clips))).astype(int)
    waves = torch.from_numpy(np.stack([fit_length(clips.load(int(i)), 0, crop_samples) for i in picks]))
    with torch.no_grad():
        return MelSTFT().eval()(waves).unsqueeze(1)


def _load_weights(spec: str, purpose: str):
    """A registry name, checkpoint or bundle as a loaded PyTorch model (a bundle must carry its checkpoint)."""
    source = resolve_model(spec)
    if source.kind == "bundle":
        from dymn_edge.runtime.bundle import load_bundle

        return load_checkpoint(load_bundle(source.path).require("checkpoint", hint=f": {purpose} needs the bundle's PyTorch checkpoint"))
    return load_checkpoint(source.path, expect=source.expect)


def _initialise(student: nn.Module, init: str, clips: Clips, crop_samples: int) -> str:
    """Warm start from a MobileNet (mapped layers) or load a DyMN of the same architecture."""
    donor = _load_weights(init, "--init")
    if donor.config.family == "mn":
        warm_start_from_mn(student, donor.model, _sample_mels(clips, crop_samples))
        return f"warm start from {init} (MobileNet layers mapped into the DyMN)"
    try:
        student.load_state_dict(donor.model.state_dict(), strict=True)
    except RuntimeError as e:
        raise TrainingError(f"--init {init}: its architecture differs from the student's ({str(e).splitlines()[0]})") from None
    return f"initialised from {init}"


def teacher_logits(teachers: Sequence[str], data: str | Path, out: str | Path, *, clip_seconds: float = 10.0,
                   hop_seconds: float | None = None, batch_size: int = 16, device: str | None = None,
                   progress: Callable[[int, int], None] | None = None) -> TeacherLogits:
    """Run the teacher(s) over every clip on a grid of training-length crops and store the logits."""
    teacher = load_teacher(teachers)
    clips = open_clips(data)  # labels are not needed to distil
    crop = int(round(clip_seconds * 32000))
    hop = int(round((hop_seconds or clip_seconds / 2) * 32000))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    logits = compute_teacher_logits(teacher, clips, crop_samples=crop, hop_samples=hop, batch_size=batch_size,
                                    device=device, progress=progress)
    logits.save(out)
    return logits


def distill(student: str, data: str | Path, out: str | Path, config: TrainConfig, *, teacher_logits_file: str | Path | None = None,
            teachers: Sequence[str] = (), val: str | Path | None = None, val_fraction: float = 0.1, init: str | None = None,
            resume: str | Path | None = None, device: str | None = None, progress: bool = True,
            model_overrides: dict | None = None, on_epoch=None) -> Trainer:
    """The paper's recipe: a DyMN student learns from teacher logits (and labels, where the data has them)."""
    stored = TeacherLogits.load(teacher_logits_file) if teacher_logits_file else None
    online = load_teacher(teachers) if teachers and stored is None else None
    if stored is None and online is None and config.kd_lambda != 1:
        raise TrainingError("distillation needs --teacher-logits FILE or --teacher MODEL")
    n_classes = stored.num_classes if stored is not None else online.num_classes if online is not None else 527
    labels = audioset_labels() if n_classes == 527 else LabelSet.placeholder(n_classes)
    clips = open_clips(data, labels)
    train, held = split_clips(clips, val, val_fraction, config.seed, labels)
    torch.manual_seed(config.seed)
    model = build_student(student, n_classes, **(model_overrides or {}))
    if init and not resume:
        logger.info(_initialise(model, init, train, config.crop_samples))
    trainer = Trainer(model, config, train, held, out, teacher=online, teacher_logits=stored, device=device, progress=progress,
                      extra_checkpoint={"student": student, "init": init})
    if resume:
        trainer.resume(resume)
    trainer.fit(on_epoch)
    return trainer


def _replace_head(model: nn.Module, n: int) -> None:
    head = model.classifier
    if isinstance(head, nn.Sequential) and isinstance(head[-1], nn.Linear):
        head[-1] = nn.Linear(head[-1].in_features, n)
        nn.init.normal_(head[-1].weight, 0, 0.01)
        nn.init.zeros_(head[-1].bias)
    elif isinstance(head, nn.Sequential) and isinstance(head[0], nn.Conv2d):  # fully convolutional head
        head[0] = nn.Conv2d(head[0].in_channels, n, kernel_size=1, bias=False)
        head[1] = nn.BatchNorm2d(n)
    else:
        raise TrainingError(f"fine-tuning replaces mlp and fully_convolutional heads; this model has {model.config.head_type}")
    model.config = dataclasses.replace(model.config, num_classes=n)


def _freeze(model: nn.Module, blocks: int | None) -> list[nn.Module]:
    """Freeze the stem and the first ``blocks`` blocks (-1: the whole body, leaving the head)."""
    if blocks is None or blocks == 0:
        return []
    body = list(model.features) if hasattr(model, "features") else [model.in_c, *model.layers, model.out_c]
    frozen = body if blocks < 0 else body[: blocks + 1]
    if blocks > len(body) - 1:
        raise TrainingError(f"--freeze {blocks}: the model has only {len(body) - 1} blocks after the stem")
    for m in frozen:
        for p in m.parameters():
            p.requires_grad_(False)
    return frozen


def finetune(from_model: str, data: str | Path, out: str | Path, config: TrainConfig, *, labels_file: str | Path | None = None,
             val: str | Path | None = None, val_fraction: float = 0.2, freeze: int | None = None, single_label: bool = False,
             device: str | None = None, progress: bool = True, on_epoch=None) -> Trainer:
    """A pretrained model with a new head for the user's own classes (supervised; no teacher)."""
    if labels_file is not None:
        labels = read_labels(labels_file)
        clips = open_clips(data, labels)
    else:
        clips = open_clips(data, new_labels=True)
        labels = clips.labels
    if clips.targets is None:
        raise TrainingError(f"{data}: fine-tuning needs labels; pass a CSV with a labels column")
    if single_label:
        counts = clips.targets.sum(axis=1)
        if (counts != 1).any():
            bad = [clips.ids[i] for i in np.flatnonzero(counts != 1)[:3]]
            raise TrainingError(f"{data}: --single-label needs exactly one label per clip; e.g. {bad} have {counts[counts != 1][:3].astype(int).tolist()}")
    train, held = split_clips(clips, val, val_fraction, config.seed, labels)
    model = _load_weights(from_model, "fine-tuning").model
    torch.manual_seed(config.seed)
    _replace_head(model, len(labels))
    if hasattr(model, "set_temperature") and model.temperature is not None:
        config = dataclasses.replace(config, temperature_span=0.0)  # a trained DyMN stays at temperature 1
    frozen = _freeze(model, freeze)
    config = dataclasses.replace(config, kd_lambda=1.0, loss="ce" if single_label else "bce")
    Path(out).mkdir(parents=True, exist_ok=True)
    write_labels(labels, Path(out) / "labels.csv")
    trainer = Trainer(model, config, train, held, out, device=device, progress=progress, frozen=frozen,
                      extra_checkpoint={"from": from_model, "labels": labels.names})
    trainer.fit(on_epoch)
    return trainer
