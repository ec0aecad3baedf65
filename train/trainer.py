"""The training loop: the paper's knowledge-distillation recipe, resumable to the bit, one or many processes.

Loss = lambda * BCE(student, labels) + (1 - lambda) * BCE(student, sigmoid(teacher / tau)),
with mixup on log-mels (targets and teacher terms mixed as EfficientAT mixes them), frequency
and time masking and a jittered mel range (``MelSTFT`` train mode), random gain and crops (the
dataset), the dynamic-conv temperature schedule, Adam/AdamW with warm-up and linear ramp-down,
float16 autocast with loss scaling on CUDA, gradient clipping. Fine-tuning uses the same loop
with lambda = 1 and, for single-label data, softmax cross-entropy.

Every epoch: a checkpoint with everything needed to continue bit-exactly (model, optimizer,
scheduler, loss scaler, RNG states; the sampler and the dataset's per-sample randomness are
functions of seed and epoch), validation mAP and agreement with the teacher, a CSV row and
TensorBoard scalars.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from dymn_edge.runtime.errors import TrainingError
from dymn_edge.runtime.metrics import mean_average_precision, top5_overlap
from dymn_edge.runtime.frontend import FrontendConfig
from dymn_edge.runtime.tagging import sigmoid

from .checkpoint import save_checkpoint
from .data import Clips, CropDataset, EpochSampler, class_balanced_weights
from .distributed import DistributedContext, convert_batch_norm, init_distributed
from .frontend import MelSTFT
from .schedule import LRSchedule, temperature_epoch
from .teacher import Teacher, TeacherLogits

__all__ = ["TrainConfig", "Trainer", "mixup"]

logger = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "dymn-edge-training-checkpoint"


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 32
    clip_seconds: float = 10.0
    epoch_len: int | None = None  # samples per epoch; default: every training clip once
    lr: float = 8e-4  # EfficientAT's max_lr
    weight_decay: float = 1e-4
    optimizer: str = "adam"  # adam (EfficientAT) or adamw
    warmup_epochs: float | None = None  # None: EfficientAT's schedule scaled to `epochs`
    rampdown_start: float | None = None
    rampdown_len: float | None = None
    last_lr_value: float = 0.01
    kd_lambda: float | None = 0.1  # weight of the label loss (1 - it weighs distillation); None: 0.1 with labels, 0 without
    kd_temperature: float = 1.0
    loss: str = "bce"  # bce (multi-label) or ce (single-label, softmax)
    mixup_alpha: float = 0.3
    freqm: int = 48
    timem: int = 192
    mel_jitter: bool = True  # EfficientAT's random fmin/fmax
    gain_db: float = 12.0
    grad_clip: float | None = 5.0
    amp: bool = True  # float16 autocast + loss scaling, CUDA only
    temperature_span: float | None = None  # epochs over which DyMN's temperature falls 30 -> 1; None: min(30, epochs / 2)
    weighted_sampler: bool = True  # class-balanced draws when the data has labels
    seed: int = 0
    num_workers: int = 0
    cache_audio: bool = True  # keep decoded clips in memory (small data)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise TrainingError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise TrainingError(f"batch size must be >= 1, got {self.batch_size}")
        if self.kd_lambda is not None and not 0.0 <= self.kd_lambda <= 1.0:
            raise TrainingError(f"kd_lambda must be in [0, 1], got {self.kd_lambda}")
        if self.loss not in ("bce", "ce"):
            raise TrainingError(f"loss must be bce or ce, got {self.loss!r}")
        if self.optimizer not in ("adam", "adamw"):
            raise TrainingError(f"optimizer must be adam or adamw, got {self.optimizer!r}")

    @property
    def crop_samples(self) -> int:
        return int(round(self.clip_seconds * FrontendConfig().sample_rate_hz))

    def lr_schedule(self) -> LRSchedule:
        base = LRSchedule.for_epochs(self.epochs, self.last_lr_value)
        return LRSchedule(
            self.warmup_epochs if self.warmup_epochs is not None else base.warmup,
            self.rampdown_start if self.rampdown_start is not None else base.rampdown_start,
            self.rampdown_len if self.rampdown_len is not None else base.rampdown_len,
            self.last_lr_value,
        )


def mixup(batch_size: int, alpha: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """EfficientAT's mixup draw: a permutation and lambda ~ Beta(alpha, alpha), folded to lambda >= 0.5."""
    perm = torch.randperm(batch_size, generator=generator)
    # Beta via two Gammas, drawn from our own generator so its state lives in the checkpoint.
    u = torch._standard_gamma(torch.full((2, batch_size), float(alpha)), generator=generator)
    lam = u[0] / (u[0] + u[1])
    return perm, torch.maximum(lam, 1 - lam)


def _collate(items: list[dict]) -> dict:
    return {
        "wave": torch.from_numpy(np.stack([i["wave"] for i in items])),
        "target": torch.from_numpy(np.stack([i["target"] for i in items])),
        "teacher": torch.from_numpy(np.stack([i["teacher"] for i in items])),
        "index": torch.tensor([i["index"] for i in items]),
    }


@dataclass
class EpochStats:
    epoch: int
    lr: float
    temperature: float | None
    train_loss: float
    label_loss: float
    distillation_loss: float
    samples_per_s: float
    val: dict[str, float] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "val"}
        return d | self.val


class Trainer:
    """Train ``model`` on ``train`` clips, validating on ``val`` clips, writing to ``out``.

    Teacher: stored ``teacher_logits`` (covering train and val clips) or an online ``teacher``;
    neither with ``kd_lambda == 1`` (plain supervised training / fine-tuning).
    """

    def __init__(self, model: nn.Module, config: TrainConfig, train: Clips, val: Clips | None, out: str | Path, *,
                 teacher: Teacher | None = None, teacher_logits: TeacherLogits | None = None, device: str | None = None,
                 progress: bool = True, extra_checkpoint: dict | None = None, frozen: list[nn.Module] | None = None) -> None:
        if config.kd_lambda is None:
            config = dataclasses.replace(config, kd_lambda=0.1 if train.targets is not None else 0.0)
        self.config = config
        self.frozen = frozen or []  # kept in eval mode: frozen layers keep their batch-norm statistics
        self.out = Path(out)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.ctx: DistributedContext = init_distributed(self.device.type)
        if self.device.type == "cuda" and self.ctx.enabled:
            self.device = torch.device("cuda", self.ctx.local_rank)
            torch.cuda.set_device(self.device)
        self.extra_checkpoint = extra_checkpoint or {}
        n_classes = model.config.num_classes
        needs_teacher = config.kd_lambda < 1.0
        if needs_teacher and teacher is None and teacher_logits is None:
            raise TrainingError("distillation (kd_lambda < 1) needs --teacher-logits FILE or --teacher MODEL")
        if teacher_logits is not None:
            teacher_logits.check(train, n_classes, config.crop_samples)
            if val is not None:
                teacher_logits.check(val, n_classes, config.crop_samples, source="teacher logits (validation clips)")
        if teacher is not None and teacher.num_classes != n_classes:
            raise TrainingError(f"teacher predicts {teacher.num_classes} classes but the student predicts {n_classes}")
        if config.kd_lambda > 0 and train.targets is None:
            raise TrainingError(f"{train.source}: no labels, so the label loss (kd_lambda={config.kd_lambda}) has nothing to learn from; "
                                "pass a CSV with a labels column or --kd-lambda 0 for pure distillation")
        self.teacher = teacher.to(self.device) if teacher is not None else None
        self.teacher_logits = teacher_logits
        self.model = model.to(self.device)
        self.mel = MelSTFT(freqm=config.freqm, timem=config.timem,
                           fmin_aug_range=10 if config.mel_jitter else 1, fmax_aug_range=2000 if config.mel_jitter else 1).to(self.device)
        self.train_set = CropDataset(train, config.crop_samples, teacher=teacher_logits, train=True, gain_db=config.gain_db,
                                     seed=config.seed, cache=config.cache_audio)
        self.val_set = CropDataset(val, config.crop_samples, teacher=teacher_logits, train=False, cache=config.cache_audio) if val is not None and len(val) else None
        weights = class_balanced_weights(train.targets) if config.weighted_sampler and train.targets is not None else None
        self.sampler = EpochSampler(len(train), batch_size=config.batch_size, weights=weights, num_samples=config.epoch_len or len(train),
                                    seed=config.seed, rank=self.ctx.rank, world_size=self.ctx.world_size)
        # HDF5 (the C library) is not fork-safe once this process has opened a file, which validation
        # does before the first epoch: workers for HDF5 data are spawned fresh instead of forked.
        context = "spawn" if config.num_workers > 0 and train.hdf5 is not None else None
        self.loader = DataLoader(self.train_set, batch_size=config.batch_size // self.ctx.world_size, sampler=self.sampler,
                                 num_workers=config.num_workers, collate_fn=_collate, drop_last=False,
                                 persistent_workers=config.num_workers > 0, multiprocessing_context=context)
        self.net: nn.Module = self.model
        if self.ctx.enabled:
            convert_batch_norm(self.model, self.device.type)
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt(params, lr=config.lr, weight_decay=config.weight_decay)
        self.lr_schedule = config.lr_schedule()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_schedule)
        self.use_amp = config.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.generator = torch.Generator().manual_seed(config.seed + 7919 * self.ctx.rank)
        self.epoch = 0
        self.history: list[dict] = []
        self.best: float | None = None
        self.progress = progress and self.ctx.is_main
        self._val_teacher: np.ndarray | None = None
        self._tb = None
        span = config.temperature_span if config.temperature_span is not None else min(30.0, config.epochs / 2)
        self.temperature_span = span

    # --- schedules ---------------------------------------------------------------------------
    def _update_temperature(self, epoch: float) -> None:
        if hasattr(self.model, "update_params"):
            self.model.update_params(temperature_epoch(epoch, self.temperature_span))

    # --- one step --------------------------------------------------------------------------
    def _losses(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = self.config
        wave = batch["wave"].to(self.device, non_blocking=True)
        y = batch["target"].to(self.device, non_blocking=True)
        teacher_logits = batch["teacher"].to(self.device) if self.teacher_logits is not None else None
        if self.teacher is not None:
            teacher_logits = self.teacher(wave)
        x = self.mel(wave).unsqueeze(1)
        bs = x.shape[0]
        perm = lam = None
        if c.mixup_alpha > 0 and bs > 1:
            perm, lam = mixup(bs, c.mixup_alpha, self.generator)
            perm, lam = perm.to(self.device), lam.to(self.device)
            x = x * lam.view(bs, 1, 1, 1) + x[perm] * (1 - lam.view(bs, 1, 1, 1))
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp):
            y_hat = self.net(x)[0]
        y_hat = y_hat.float()
        zero = torch.zeros((), device=self.device)
        label_loss = distill = zero
        if c.kd_lambda > 0:
            y_mix = y if perm is None else y * lam.view(bs, 1) + y[perm] * (1 - lam.view(bs, 1))
            if c.loss == "ce":
                label_loss = torch.sum(-y_mix * F.log_softmax(y_hat, dim=1), dim=1).mean()
            else:
                label_loss = F.binary_cross_entropy_with_logits(y_hat, y_mix)
        if c.kd_lambda < 1 and teacher_logits is not None:
            soft = torch.sigmoid(teacher_logits.float() / c.kd_temperature)
            per_sample = F.binary_cross_entropy_with_logits(y_hat, soft, reduction="none").mean(dim=1)
            if perm is not None:
                mixed = F.binary_cross_entropy_with_logits(y_hat, soft[perm], reduction="none").mean(dim=1)
                per_sample = per_sample * lam + mixed * (1 - lam)
            distill = per_sample.mean()
        label_loss, distill = c.kd_lambda * label_loss, (1 - c.kd_lambda) * distill
        return label_loss + distill, label_loss.detach(), distill.detach()

    def train_epoch(self) -> EpochStats:
        c = self.config
        self.net.train()
        for m in self.frozen:
            m.eval()
        self.mel.train()
        if self.teacher is not None:
            for m in self.teacher.members:
                if isinstance(m, nn.Module):
                    m.eval()
        self.sampler.set_epoch(self.epoch)
        self.train_set.set_epoch(self.epoch)
        steps = max(len(self.loader), 1)
        totals = torch.zeros(3, dtype=torch.float64)
        seen = 0
        t0 = time.perf_counter()
        bar = _Bar(self.progress, f"epoch {self.epoch + 1}/{c.epochs}", steps)
        for step, batch in enumerate(self.loader):
            self._update_temperature(self.epoch + step / steps)
            loss, label_loss, distill = self._losses(batch)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if c.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            n = batch["wave"].shape[0]
            seen += n
            totals += torch.tensor([loss.item(), label_loss.item(), distill.item()], dtype=torch.float64) * n
            bar.advance(f"loss {loss.item():.4f}")
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        if self.ctx.enabled:  # log the global batch's losses, not rank 0's half
            import torch.distributed as dist

            summed = torch.cat([totals, torch.tensor([float(seen)], dtype=torch.float64)])
            dist.all_reduce(summed)
            totals, seen = summed[:3], int(summed[3].item())
        bar.close()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.epoch += 1
        self._update_temperature(self.epoch)
        means = (totals / max(seen, 1)).tolist()
        temperature = getattr(self.model, "temperature", None)
        return EpochStats(self.epoch, lr, temperature, *means, samples_per_s=seen / elapsed)

    # --- validation --------------------------------------------------------------------------
    @torch.no_grad()
    def _on_crops(self, dataset: CropDataset, model: Callable[[torch.Tensor], torch.Tensor], batch_size: int) -> np.ndarray:
        """``model`` (waveforms -> logits) over the dataset's evaluation crops, in batches."""
        out = []
        for b in range(0, len(dataset), batch_size):
            wave = torch.from_numpy(np.stack([dataset[i]["wave"] for i in range(b, min(b + batch_size, len(dataset)))]))
            out.append(model(wave.to(self.device)).float().cpu().numpy())
        return np.concatenate(out)

    def _student(self, wave: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp):
            return self.model(self.mel(wave).unsqueeze(1))[0]

    def predict(self, dataset: CropDataset, batch_size: int = 32) -> np.ndarray:
        """Student logits on the dataset's evaluation crops."""
        self.model.eval()
        self.mel.eval()
        return self._on_crops(dataset, self._student, batch_size)

    def _teacher_on_val(self) -> np.ndarray | None:
        if self._val_teacher is None and self.val_set is not None:
            if self.teacher_logits is not None:
                self._val_teacher = np.stack([self.val_set[i]["teacher"] for i in range(len(self.val_set))])
            elif self.teacher is not None:
                self._val_teacher = self._on_crops(self.val_set, self.teacher, batch_size=16)
        return self._val_teacher

    def validate(self) -> dict[str, float]:
        if self.val_set is None:
            return {}
        logits = self.predict(self.val_set)
        result: dict[str, float] = {}
        targets = self.val_set.clips.targets
        if targets is not None and targets.sum() > 0:
            result["val_map"] = mean_average_precision(sigmoid(logits), targets)[0]
        teacher = self._teacher_on_val()
        if teacher is not None:
            result["teacher_top1"] = float(np.mean(np.argmax(teacher, 1) == np.argmax(logits, 1)))
            result["teacher_top5"] = float(np.mean(top5_overlap(teacher, logits)))
        return result

    # --- checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        # numpy's state as a tensor and plain numbers: the checkpoint then loads with weights_only=True
        rng = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
               "python": random.getstate(), "generator": self.generator.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": CHECKPOINT_FORMAT,
            "state_dict": self.model.state_dict(),
            "config": self.model.config.to_dict(),
            "temperature": getattr(self.model, "temperature", None),
            "train_config": asdict(self.config),
            "epoch": self.epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "history": self.history,
            "best": self.best,
            "world_size": self.ctx.world_size,
            **self.extra_checkpoint,
        }

    def save(self) -> Path:
        ckpt_dir = self.out / "checkpoints"
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        path = ckpt_dir / f"epoch_{self.epoch:03d}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save(self.state(), tmp)
        tmp.replace(path)  # a crash mid-write never leaves a truncated checkpoint behind
        return path

    def resume(self, path: str | Path) -> None:
        """Continue from a training checkpoint of the same architecture, exactly where it stopped."""
        path = Path(path)
        if not path.is_file():
            raise TrainingError(f"{path}: no such checkpoint to resume from")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for a damaged file
            raise TrainingError(f"{path}: cannot read the checkpoint ({e})") from e
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise TrainingError(f"{path}: not a dymn-edge training checkpoint (no optimizer/RNG state); "
                                "to start from a model's weights use --init or `train finetune --from`")
        mine = self.model.config.to_dict()
        if state["config"] != mine:
            diff = {k: (state["config"].get(k), v) for k, v in mine.items() if state["config"].get(k) != v}
            raise TrainingError(f"{path}: checkpoint is for another architecture; differs in {diff} (checkpoint, this run)")
        self.model.load_state_dict(state["state_dict"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        kind, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        random.setstate(rng["python"])
        self.generator.set_state(rng["generator"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.best = state.get("best")
        self._update_temperature(self.epoch)
        if self.epoch >= self.config.epochs:
            raise TrainingError(f"{path}: already trained {self.epoch} epochs; pass --epochs larger than {self.epoch} to continue")

    # --- logs ------------------------------------------------------------------------------
    def _log(self, stats: EpochStats) -> None:
        row = stats.row()
        self.history.append(row)
        csv_path = self.out / "metrics.csv"
        new = not csv_path.exists()
        with open(csv_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out / "tensorboard"))
            except ImportError:
                logger.warning("tensorboard is not installed; logging to metrics.csv only (pip install tensorboard)")
                self._tb = False
        if self._tb:
            for k, v in row.items():
                if isinstance(v, (int, float)) and v is not None and k != "epoch" and math.isfinite(v):
                    self._tb.add_scalar(k, v, stats.epoch)
            self._tb.flush()

    def _save_model(self, name: str) -> Path:
        """The model alone, in our checkpoint format (config + EfficientAT state-dict layout)."""
        path = self.out / name
        save_checkpoint(self.model, path, **{k: v for k, v in self.extra_checkpoint.items() if k in ("labels",)})
        return path

    def fit(self, on_epoch: Callable[[EpochStats], None] | None = None) -> list[dict]:
        self.out.mkdir(parents=True, exist_ok=True)
        if self.epoch == 0 and self.ctx.is_main and self.val_set is not None:
            # the starting point, as a baseline for every later epoch (warm starts show here)
            stats = EpochStats(0, 0.0, getattr(self.model, "temperature", None), math.nan, math.nan, math.nan, math.nan, self.validate())
            self._log(stats)
            if on_epoch is not None:
                on_epoch(stats)
        while self.epoch < self.config.epochs:
            stats = self.train_epoch()
            if self.ctx.is_main:
                stats.val = self.validate()
                self._log(stats)
                self.save()
                key = stats.val.get("val_map", stats.val.get("teacher_top5"))
                if key is not None and (self.best is None or key > self.best):
                    self.best = key
                    self._save_model("best.pt")
                if on_epoch is not None:
                    on_epoch(stats)
            self.ctx.barrier()
        if self.ctx.is_main:
            self._save_model("model.pt")
            torch.save(self.model.state_dict(), self.out / "efficientat_state_dict.pt")
            if self._tb:
                self._tb.close()
        return self.history


class _Bar:
    """A rich progress bar on the main process, nothing elsewhere."""

    def __init__(self, enabled: bool, title: str, total: int) -> None:
        self.progress = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=True)
            self.progress.start()
            self.task = self.progress.add_task(title, total=total, info="")

    def advance(self, info: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=1, info=info)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
