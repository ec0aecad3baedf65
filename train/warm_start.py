"""Start a DyMN student from a trained MobileNetV3 of the same width, where the layers correspond.

DyMN keeps MobileNetV3's body: the same stem, the same expand / depthwise / project convolutions
with the same shapes, the same final 1x1 conv and head. Only the mechanisms around them differ.
So every one of a dynamic conv's K kernels gets the MobileNet kernel (plus 1 % noise, so they can
drift apart), the batch norms and the head are copied, and the dynamic parts start as the
identity of what they replace: Dy-ReLU's coefficient net at zero is a plain ReLU, and coordinate
attention with zero weights and a large bias passes the features through. MobileNet's
squeeze-excitation has no counterpart, so its average per-channel gain, measured on real
inputs, is folded into the projection that follows it. The student then starts close to the
teacher instead of from noise.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from dymn_edge.runtime.errors import TrainingError

from .layers.context import CoordAtt
from .layers.dynamic_conv import DynamicConv
from .layers.dyrelu import DyReLUB
from .layers.squeeze_excitation import ConcurrentSE

__all__ = ["warm_start_from_mn"]

logger = logging.getLogger(__name__)
CA_BIAS = 12.0


def _body(model: nn.Module, family: str) -> list[tuple[nn.Module, nn.Module | None]]:
    """The (conv, batch norm) pairs of the body in forward order, skipping squeeze-excitation and context paths."""
    pairs: list[tuple[nn.Module, nn.Module | None]] = []
    if family == "mn":
        for name, m in model.features.named_modules():
            if isinstance(m, nn.Sequential) and len(m) >= 2 and isinstance(m[0], nn.Conv2d) and isinstance(m[1], nn.BatchNorm2d):
                pairs.append((m[0], m[1]))
        return pairs
    pairs.append((model.in_c[0], model.in_c[1]))
    for layer in model.layers:
        if hasattr(layer, "depth_conv"):
            if isinstance(layer.exp_conv, DynamicConv):
                pairs.append((layer.exp_conv, layer.exp_norm))
            pairs.append((layer.depth_conv, layer.depth_norm))
            pairs.append((layer.proj_conv, layer.proj_norm))
        else:  # a static block of a "replace_se" DyMN: MobileNet's own layout
            for m in layer.block:
                if isinstance(m, nn.Sequential) and isinstance(m[0], nn.Conv2d):
                    pairs.append((m[0], m[1]))
    pairs.append((model.out_c[0], model.out_c[1]))
    return pairs


def _se_gains(teacher: nn.Module, mels: torch.Tensor) -> dict[int, torch.Tensor]:
    """Per-channel least-squares gain of each squeeze-excitation layer on real inputs, keyed by the
    id of the projection conv that follows it. DyMN has no SE; folding its average effect into
    that conv keeps the student's activations at the teacher's scale."""
    gains: dict[int, torch.Tensor] = {}
    hooks = []
    for block in teacher.features:
        layers = list(getattr(block, "block", []))
        for i, m in enumerate(layers):
            if isinstance(m, ConcurrentSE) and i + 1 < len(layers):
                proj = layers[i + 1][0]

                def hook(mod, inp, out, key=id(proj)):
                    x = inp[0]
                    gains[key] = (out * x).sum((0, 2, 3)) / (x * x).sum((0, 2, 3)).clamp_min(1e-12)

                hooks.append(m.register_forward_hook(hook))
    was_training = teacher.training
    teacher.eval()
    try:
        teacher(mels)
    finally:
        for h in hooks:
            h.remove()
        teacher.train(was_training)
    return gains


def _depthwise_inputs(teacher: nn.Module, mels: torch.Tensor) -> list[torch.Tensor | None]:
    """Per block, a sample of the teacher's depthwise pre-activations (channels, n), where the block uses Hardswish."""
    samples: list[torch.Tensor | None] = []
    hooks = []
    g = torch.Generator().manual_seed(0)
    for block in list(teacher.features)[1:-1]:
        depthwise = [m for m in block.block if isinstance(m, nn.Sequential) and m[0].groups > 1][0]
        samples.append(None)
        if isinstance(depthwise[2], nn.Hardswish):
            slot = len(samples) - 1

            def hook(mod, inp, slot=slot):
                x = inp[0].transpose(0, 1).reshape(inp[0].shape[1], -1)
                idx = torch.randint(x.shape[1], (min(4096, x.shape[1]),), generator=g)
                samples[slot] = x[:, idx].clone()

            hooks.append(depthwise[2].register_forward_pre_hook(hook))
    try:
        teacher(mels)
    finally:
        for h in hooks:
            h.remove()
    return samples


def _fit_dyrelu(dyrelu: DyReLUB, x: torch.Tensor) -> None:
    """Set Dy-ReLU's static coefficients (coefficient-net bias, zero weights) to the two-piece
    approximation of Hardswish that fits the channel's real inputs best (least squares, a
    breakpoint search over quantiles), within the ranges Dy-ReLU's coefficients can take."""
    target = F.hardswish(x)
    best_err = torch.full((x.shape[0],), float("inf"))
    best = torch.zeros(x.shape[0], 4)
    for q in torch.linspace(0.1, 0.9, 9):
        p = torch.quantile(x, q, dim=1, keepdim=True)
        coefs = []
        for side in (x < p, x >= p):
            w = side.float()
            n = w.sum(1).clamp_min(1)
            mx, my = (w * x).sum(1) / n, (w * target).sum(1) / n
            slope = (w * (x - mx[:, None]) * (target - my[:, None])).sum(1) / (w * (x - mx[:, None]) ** 2).sum(1).clamp_min(1e-6)
            coefs.append((slope, my - slope * mx))
        (a2, b2), (a1, b1) = coefs  # piece 1 (init slope 1) takes the right side, piece 2 the left
        a1, a2 = a1.clamp(0.01, 1.99), a2.clamp(-0.99, 0.99)
        b1, b2 = b1.clamp(-0.49, 0.49), b2.clamp(-0.49, 0.49)
        approx = torch.maximum(a1[:, None] * x + b1[:, None], a2[:, None] * x + b2[:, None])
        err = ((approx - target) ** 2).mean(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best[better] = torch.stack([a1, a2, b1, b2], 1)[better]
    theta = ((best - dyrelu.init_v.cpu()) / dyrelu.lambdas.cpu()).clamp(-0.98, 0.98)  # (C, 2M) for M = 2
    z = torch.log((1 + theta) / (1 - theta))  # 2 sigmoid(z) - 1 = theta
    nn.init.zeros_(dyrelu.coef_net[0].weight)
    dyrelu.coef_net[0].bias.copy_(z.reshape(-1))


@torch.no_grad()
def warm_start_from_mn(student: nn.Module, teacher: nn.Module, mels: torch.Tensor | None = None, noise: float = 0.01,
                       seed: int = 0) -> int:
    """Copy ``teacher`` (MobileNetV3) weights into ``student`` (DyMN); returns the number of tensors copied.

    ``mels``: a batch of real log-mel inputs (B, 1, n_mels, frames) to measure the teacher's
    squeeze-excitation gains on; without it they are left out.
    """
    if getattr(student.config, "family", "") != "dymn" or getattr(teacher.config, "family", "") != "mn":
        raise TrainingError("warm start copies a MobileNetV3 (mn) into a DyMN (dymn) student")
    if student.config.num_classes != teacher.config.num_classes or student.config.head_type != teacher.config.head_type:
        raise TrainingError("warm start needs the same head: "
                            f"teacher {teacher.config.head_type}/{teacher.config.num_classes}, student {student.config.head_type}/{student.config.num_classes}")
    src, dst = _body(teacher, "mn"), _body(student, "dymn")
    if len(src) != len(dst):
        raise TrainingError(f"teacher has {len(src)} body convolutions, student {len(dst)}: widths or block options differ")
    g = torch.Generator().manual_seed(seed)
    gains = _se_gains(teacher, mels) if mels is not None else {}
    copied = 0
    for (s_conv, s_bn), (d_conv, d_bn) in zip(src, dst):
        w = s_conv.weight
        if id(s_conv) in gains:
            w = w * gains[id(s_conv)].view(1, -1, 1, 1)
        if isinstance(d_conv, DynamicConv):
            if tuple(w.shape) != d_conv.kernel_shape:
                raise TrainingError(f"kernel shapes differ: teacher {tuple(w.shape)}, student {d_conv.kernel_shape}")
            k = d_conv.k
            kernels = w.unsqueeze(0).repeat(k, 1, 1, 1, 1)
            kernels = kernels * (1 + noise * torch.randn(kernels.shape, generator=g))
            d_conv.weight.copy_(kernels.reshape(d_conv.weight.shape))
        else:
            if d_conv.weight.shape != w.shape:
                raise TrainingError(f"conv shapes differ: teacher {tuple(w.shape)}, student {tuple(d_conv.weight.shape)}")
            d_conv.weight.copy_(w)
        d_bn.load_state_dict(s_bn.state_dict())
        copied += 1 + len(s_bn.state_dict())
    student.classifier.load_state_dict(teacher.classifier.state_dict())
    copied += len(teacher.classifier.state_dict())
    for m in student.modules():
        if isinstance(m, DyReLUB):
            nn.init.zeros_(m.coef_net[0].weight)
            nn.init.zeros_(m.coef_net[0].bias)
    if mels is not None:
        for layer, x in zip(student.layers, _depthwise_inputs(teacher, mels)):
            if x is not None and isinstance(getattr(layer, "depth_act", None), DyReLUB) and layer.depth_act.M == 2:
                _fit_dyrelu(layer.depth_act, x)
    for layer in student.layers:
        if hasattr(layer, "ca") and isinstance(layer.ca, CoordAtt):
            for conv in (layer.context_gen.conv_f, layer.context_gen.conv_t):
                nn.init.zeros_(conv.weight)
                nn.init.constant_(conv.bias, CA_BIAS)
    logger.info("warm start: %d tensors copied from the MobileNet teacher", copied)
    return copied
