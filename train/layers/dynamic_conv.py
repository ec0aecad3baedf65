"""Dynamic convolution (DyMN, Schmid et al. 2023, Eq. 5-6): K kernels mixed per input.

Attention over the K kernels is ``softmax(Linear(h_c) / T)`` from the block's context vector
h_c; each sample is convolved with its own aggregated kernel. The temperature T starts high
(30: near-uniform attention, all kernels train) and anneals to 1; it is an attribute, not a
parameter, so it is not in the state dict.

Weight layout matches EfficientAT: ``weight`` is (1, att_groups=1, K, out * in/groups * k * k)
and kernel j is ``weight[0, 0, j].view(out, in/groups, k, k)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DynamicConv", "TemperatureSchedule", "scheduled_temperature"]

# (T_max, T_min, T0_slope, T1_slope): EfficientAT get_model()'s default schedule.
TemperatureSchedule = tuple[float, float, float, float]
DEFAULT_SCHEDULE: TemperatureSchedule = (30.0, 1.0, 1.0, 0.02)


def scheduled_temperature(epoch: float, schedule: TemperatureSchedule = DEFAULT_SCHEDULE) -> float:
    """Temperature after ``epoch`` epochs: a steep linear decay, then a shallow one, floored at T_min."""
    t_max, t_min, t0_slope, t1_slope = schedule
    t0 = t_max - t0_slope * epoch
    t1 = 1 + t1_slope * (t_max - 1) / t0_slope - t1_slope * epoch
    return max(t0, t1, t_min)


class DynamicConv(nn.Module):
    """K-kernel dynamic convolution conditioned on a context vector (no bias, att_groups=1)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        context_dim: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        padding: int = 0,
        groups: int = 1,
        k: int = 4,
        temp_schedule: TemperatureSchedule = DEFAULT_SCHEDULE,
    ) -> None:
        super().__init__()
        if in_channels % groups:
            raise ValueError(f"in_channels={in_channels} is not divisible by groups={groups}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = groups
        self.k = k
        self.temp_schedule = tuple(float(v) for v in temp_schedule)
        self.temperature = self.temp_schedule[0]
        self.residuals = nn.Sequential(nn.Linear(context_dim, k))
        # randn before kaiming looks redundant, but it draws from the RNG exactly as EfficientAT does,
        # so torch.manual_seed(s) gives bit-identical initial weights in both code bases.
        kernels = torch.randn(k, out_channels, in_channels // groups, kernel_size, kernel_size)
        for j in range(k):  # each kernel initialised on its own, as EfficientAT does
            nn.init.kaiming_normal_(kernels[j], mode="fan_out")
        self.weight = nn.Parameter(kernels.reshape(1, 1, k, -1))

    @property
    def kernel_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels // self.groups, self.kernel_size, self.kernel_size)

    def kernels(self) -> torch.Tensor:
        """The K static kernels, (K, out, in/groups, k, k)."""
        return self.weight.view(self.k, *self.kernel_shape)

    def attention(self, context: torch.Tensor) -> torch.Tensor:
        """Softmax weights over kernels, (B, K), from the context vector (B, H, 1, 1) or (B, H)."""
        logits = self.residuals(context.reshape(context.shape[0], -1))
        return F.softmax(logits / self.temperature, dim=-1)

    def forward(self, x: torch.Tensor, g: tuple[torch.Tensor, ...]) -> torch.Tensor:
        b, c, f, t = x.shape
        attention = self.attention(g[0])  # (B, K)
        # -1 for the folded (batch x out) axis keeps the kernel's other dims static for ONNX export.
        weight = (attention @ self.weight.view(self.k, -1)).reshape(-1, *self.kernel_shape[1:])
        # Each sample has its own kernel: fold the batch into the channel axis and use groups.
        out = F.conv2d(
            x.reshape(1, -1, f, t),
            weight,
            None,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups * b,
        )
        return out.reshape(b, self.out_channels, out.shape[-2], out.shape[-1])

    def update_params(self, epoch: float) -> None:
        self.temperature = scheduled_temperature(epoch, self.temp_schedule)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"groups={self.groups}, k={self.k}, temperature={self.temperature}"
        )
