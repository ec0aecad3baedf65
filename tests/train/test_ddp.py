"""torchrun with two gloo processes trains the same model as one process with the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process(kd_sets, tmp_path):
    from dymn_edge.train.recipes import teacher_logits

    logits = teacher_logits(["mn04_as"], kd_sets["train"], tmp_path / "t.npz", clip_seconds=2.0)
    assert logits.num_classes == 527
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    args = [str(kd_sets["train"]), str(tmp_path / "t.npz")]
    single = subprocess.run([sys.executable, str(HERE / "ddp_run.py"), *args, str(tmp_path / "one")],
                            env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(HERE / "ddp_run.py"), *args,
                          str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = torch.load(tmp_path / "one" / "result.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "result.pt", weights_only=True)
    assert one["world_size"] == 1 and two["world_size"] == 2
    diffs = torch.cat([(one["state_dict"][k].float() - two["state_dict"][k].float()).abs().flatten()
                       for k in one["state_dict"] if one["state_dict"][k].dtype.is_floating_point])
    # Float sums in another order differ by ~1e-7; Adam turns that into up to lr-sized steps for the few
    # weights whose gradient is ~0, so bound the bulk tightly and the worst case by the learning rate.
    # (Per-process batch norm instead of the global one gives 0.09 worst and 29 % of weights off by > 1e-5.)
    assert diffs.quantile(0.999).item() < 1e-4, diffs.quantile(0.999).item()
    assert diffs.max().item() < 1e-3, diffs.max().item()
    assert (diffs > 1e-5).float().mean().item() < 0.02
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
