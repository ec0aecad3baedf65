"""``dymn-edge train``: teacher logits, knowledge distillation and fine-tuning (options -> ``train.recipes``)."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["train"]


def _require_torch() -> None:
    from dymn_edge.loader import require_torch

    require_torch("training")


def _epoch_printer():
    from rich.console import Console

    console = Console(stderr=True)

    def show(stats) -> None:
        parts = [f"epoch {stats.epoch:3d}", f"loss {stats.train_loss:.4f}", f"lr {stats.lr:.2e}"]
        if stats.temperature is not None:
            parts.append(f"T {stats.temperature:.2f}")
        parts += [f"{k} {v:.4f}" for k, v in stats.val.items()]
        parts.append(f"{stats.samples_per_s:.1f} samples/s")
        console.print("  ".join(parts))

    return show


def _training_options(f):
    """Options every training command shares (the recipe's knobs)."""
    options = [
        click.option("--data", required=True, metavar="DIR|CSV|HDF5", help="Training audio: a folder, a CSV of path[,labels], or an AudioSet HDF5 file."),
        click.option("--val", default=None, metavar="DIR|CSV|HDF5", help="Held-out validation audio (disjoint from --data)."),
        click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=None, help="Without --val: hold out this share of --data (seeded)."),
        click.option("-o", "--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Run folder: checkpoints, metrics.csv, tensorboard/, model.pt."),
        click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True),
        click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Global batch (split across torchrun processes)."),
        click.option("--lr", type=float, default=8e-4, show_default=True, help="Peak learning rate."),
        click.option("--weight-decay", type=float, default=1e-4, show_default=True),
        click.option("--optimizer", type=click.Choice(["adam", "adamw"]), default="adam", show_default=True),
        click.option("--clip-seconds", type=float, default=10.0, show_default=True, help="Training crop length."),
        click.option("--epoch-len", type=click.IntRange(min=1), default=None, help="Samples per epoch (default: every clip once)."),
        click.option("--mixup-alpha", type=float, default=0.3, show_default=True, help="0 turns mixup off."),
        click.option("--freqm", type=click.IntRange(min=0), default=48, show_default=True, help="Frequency-mask width (mel bins)."),
        click.option("--timem", type=click.IntRange(min=0), default=192, show_default=True, help="Time-mask width (frames)."),
        click.option("--gain-db", type=float, default=12.0, show_default=True, help="Random gain of up to +-this many dB."),
        click.option("--grad-clip", type=float, default=5.0, show_default=True, help="Gradient-norm clip (0: off)."),
        click.option("--no-amp", is_flag=True, help="No float16 mixed precision on CUDA."),
        click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True, help="Data-loading worker processes."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--device", default=None, help="cpu or cuda (default: cuda when available)."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _config(kw: dict, **fixed):
    from dymn_edge.train.trainer import TrainConfig

    return TrainConfig(
        epochs=kw["epochs"], batch_size=kw["batch_size"], lr=kw["lr"], weight_decay=kw["weight_decay"], optimizer=kw["optimizer"],
        clip_seconds=kw["clip_seconds"], epoch_len=kw["epoch_len"], mixup_alpha=kw["mixup_alpha"], freqm=kw["freqm"],
        timem=kw["timem"], gain_db=kw["gain_db"], grad_clip=kw["grad_clip"] or None, amp=not kw["no_amp"],
        num_workers=kw["workers"], seed=kw["seed"], **fixed,
    )


def _done(trainer) -> None:
    if not trainer.ctx.is_main:
        return
    out = trainer.out
    click.echo(f"model: {out / 'model.pt'} (best epoch: {out / 'best.pt'}); log: {out / 'metrics.csv'}")
    click.echo(f"export: dymn-edge export onnx {out / 'model.pt'} --out {out / 'bundle'}")


@click.group()
def train() -> None:
    """Train DyMN models: teacher logits, knowledge distillation, fine-tuning (multi-GPU via torchrun)."""


@train.command("teacher-logits")
@click.option("--teacher", "teachers", multiple=True, required=True, metavar="MODEL|BUNDLE",
              help="Registry name, checkpoint or bundle; repeat for an ensemble (logits are averaged).")
@click.option("--data", required=True, metavar="DIR|CSV|HDF5")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Logits file to write (.npz).")
@click.option("--clip-seconds", type=float, default=10.0, show_default=True, help="Crop length: the student's training length.")
@click.option("--hop-seconds", type=float, default=None, help="Distance between stored crops (default: half a crop).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--device", default=None)
@click.option("--quiet", is_flag=True)
def teacher_logits_cmd(teachers, data, out, clip_seconds, hop_seconds, batch_size, device, quiet):
    """Run teacher model(s) over the clips and store their logits, keyed by clip and crop."""
    _require_torch()
    from rich.progress import Progress

    from dymn_edge.train.recipes import teacher_logits

    with Progress(transient=True, disable=quiet) as progress:
        task = progress.add_task("teacher logits", total=None)
        result = teacher_logits(teachers, data, out, clip_seconds=clip_seconds, hop_seconds=hop_seconds, batch_size=batch_size,
                                device=device, progress=lambda done, total: progress.update(task, completed=done, total=total))
    click.echo(f"{out}: {len(result.logits)} crops of {len(result.clip_ids)} clips, {result.num_classes} classes, "
               f"teacher {' + '.join(result.teachers)}")


@train.command("kd")
@click.option("--student", required=True, metavar="dymn04|dymn10|dymn20|WIDTH")
@click.option("--teacher-logits", "logits_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Stored teacher logits (`train teacher-logits`).")
@click.option("--teacher", "teachers", multiple=True, metavar="MODEL", help="Online teacher(s), run in every step (small data).")
@click.option("--init", default=None, metavar="MODEL", help="Start from these weights: a MobileNet of the same width is mapped into the DyMN.")
@click.option("--kd-lambda", type=click.FloatRange(0, 1), default=None, help="Label-loss weight (default 0.1 with labels, 0 without).")
@click.option("--kd-temperature", type=float, default=1.0, show_default=True)
@click.option("--resume", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, help="Continue from a checkpoints/epoch_NNN.pt.")
@_training_options
def kd_cmd(student, logits_file, teachers, init, kd_lambda, kd_temperature, resume, **kw):
    """Distil a DyMN student from a teacher (the paper's recipe)."""
    _require_torch()
    if logits_file is None and not teachers:
        raise click.UsageError("pass --teacher-logits FILE or --teacher MODEL")
    from dymn_edge.train.recipes import distill

    config = _config(kw, kd_lambda=kd_lambda, kd_temperature=kd_temperature)
    trainer = distill(student, kw["data"], kw["out"], config, teacher_logits_file=logits_file, teachers=teachers, val=kw["val"],
                      val_fraction=0.1 if kw["val_fraction"] is None else kw["val_fraction"], init=init, resume=resume,
                      device=kw["device"], progress=not kw["quiet"], on_epoch=_epoch_printer())
    _done(trainer)


@train.command("finetune")
@click.option("--from", "from_model", required=True, metavar="MODEL", help="Pretrained model: registry name, checkpoint or bundle.")
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Label list (index,mid,display_name); default: the distinct labels of the --data CSV.")
@click.option("--freeze", type=int, default=None, help="Freeze the stem and the first N blocks (-1: everything but the head).")
@click.option("--single-label", is_flag=True, help="One label per clip: softmax cross-entropy instead of per-class sigmoid.")
@_training_options
def finetune_cmd(from_model, labels_file, freeze, single_label, **kw):
    """Fine-tune a pretrained model on your own labels (new head)."""
    _require_torch()
    from dymn_edge.train.recipes import finetune

    config = _config(kw)
    trainer = finetune(from_model, kw["data"], kw["out"], config, labels_file=labels_file, val=kw["val"],
                       val_fraction=0.2 if kw["val_fraction"] is None else kw["val_fraction"], freeze=freeze,
                       single_label=single_label, device=kw["device"], progress=not kw["quiet"], on_epoch=_epoch_printer())
    _done(trainer)
