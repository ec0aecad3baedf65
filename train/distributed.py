"""Multi-process training through torchrun: process-group setup and batch norm over the global batch.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; one process per GPU (NCCL) or per CPU slot (gloo).
Batch norm must see the global batch or DDP trains a different model than one process with
the same batch size would. PyTorch's SyncBatchNorm only runs on GPUs, so CPU runs use
``GlobalBatchNorm2d``, written here: it all-reduces the sums with a differentiable all-reduce,
so gradients flow through the global statistics too.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistributedContext", "GlobalBatchNorm2d", "convert_batch_norm", "init_distributed"]


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device_type: str) -> DistributedContext:
    """Join the process group torchrun describes (a no-op for a plain single-process run)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistributedContext()
    ctx = DistributedContext(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return ctx


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) with a gradient: every rank's output depends on every rank's input, so the
    gradient of the input is the sum of all ranks' output gradients. (torch.distributed.nn's
    all_reduce does the same but is deprecated in favour of a private module.)"""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the batch summed over all processes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = (0, 2, 3)
        local = torch.stack([x.sum(dims), (x * x).sum(dims)])  # (2, C)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        total = _SumOverRanks.apply(torch.cat([local.flatten(), count]))
        c = x.shape[1]
        n = total[-1]
        mean = total[:c] / n
        var = total[c:2 * c] / n - mean * mean  # biased, as batch norm normalises with
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var[None, :, None, None] + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def convert_batch_norm(module: nn.Module, device_type: str) -> nn.Module:
    """Swap every BatchNorm2d for a synchronised one (same parameters and buffers, same state-dict keys)."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm2d):
        new = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_batch_norm(child, device_type))
    return module
