"""Training throughput of the KD recipe: samples per second of real training steps, CPU vs CUDA, AMP on/off.

Runs the same Trainer as `dymn-edge train kd` (online teacher, mixup, masking, gain, the
temperature schedule) for a warm-up epoch that also fills the decoded-audio cache, then a
timed epoch of ``--steps`` steps; prints one JSON line per configuration.

    python benchmarks/train_throughput.py --data ../shared/data/esc50/audio --model dymn10 \
        --steps 200 --batch 64 --device cuda --amp both
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import torch

from dymn_edge.runtime.labels import audioset_labels
from dymn_edge.train.data import open_clips
from dymn_edge.train.recipes import build_student
from dymn_edge.train.teacher import load_teacher
from dymn_edge.train.trainer import TrainConfig, Trainer


def run(args, amp: bool) -> dict:
    clips = open_clips(args.data, audioset_labels())  # a labelled CSV trains on labels when no teacher is given
    torch.manual_seed(0)
    model = build_student(args.model, 527)
    teacher = load_teacher([args.teacher]) if args.teacher else None
    config = TrainConfig(epochs=2, batch_size=args.batch, clip_seconds=args.seconds, epoch_len=args.steps * args.batch,
                         kd_lambda=0.0 if teacher else 1.0, amp=amp, num_workers=args.workers, weighted_sampler=False)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model, config, clips, None, out, teacher=teacher, device=args.device, progress=False)
        trainer.train_epoch()  # warm-up: cudnn autotuning, allocator, decoded-audio cache
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        stats = trainer.train_epoch()
        wall = time.perf_counter() - t0
    result = {
        "model": args.model, "device": args.device, "amp": amp and args.device.startswith("cuda"), "batch": args.batch,
        "seconds": args.seconds, "steps": args.steps, "teacher": args.teacher, "samples_per_s": round(stats.samples_per_s, 2),
        "epoch_wall_s": round(wall, 2), "loss": round(stats.train_loss, 5), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }
    if args.device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name()
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--model", default="dymn10")
    p.add_argument("--teacher", default=None, help="Online teacher (e.g. mn04_as); default: none (label loss only).")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--device", default="cuda")
    p.add_argument("--amp", choices=["on", "off", "both"], default="both")
    p.add_argument("--workers", type=int, default=0)
    args = p.parse_args()
    for amp in {"on": [True], "off": [False], "both": [False, True]}[args.amp]:
        print(json.dumps(run(args, amp)), flush=True)


if __name__ == "__main__":
    main()
