"""One tiny distillation epoch with randomness off; run alone or under torchrun (see test_ddp.py).

    python ddp_run.py TRAIN_CSV LOGITS OUT          # one process, global batch 8
    torchrun --nproc_per_node 2 ddp_run.py ...      # two gloo processes, 4 each
"""

import sys

import torch

from dymn_edge.train.recipes import distill
from dymn_edge.train.trainer import TrainConfig

train_csv, logits, out = sys.argv[1:4]
config = TrainConfig(epochs=1, batch_size=8, clip_seconds=2.0, epoch_len=16, kd_lambda=0.0, lr=1e-3, mixup_alpha=0.0,
                     freqm=0, timem=0, mel_jitter=False, gain_db=0.0, seed=0)
trainer = distill("dymn04", train_csv, out, config, teacher_logits_file=logits, val_fraction=0, device="cpu", progress=False,
                  model_overrides={"dropout": 0.0})
if trainer.ctx.is_main:
    torch.save({"state_dict": trainer.model.state_dict(), "world_size": trainer.ctx.world_size,
                "loss": trainer.history[-1]["train_loss"]}, f"{out}/result.pt")
