"""Export strategies for DyMN's dynamic convolutions: exact rewrites of a trained model for ONNX.

A dynamic convolution applies, per sample b, the kernel W_b = sum_k a_bk W_k. Backends handle
that differently, so the same math is written several ways:

* ``grouped``  -- faithful to EfficientAT: aggregate W_b at run time, fold the batch into the
  conv groups and run one grouped convolution. Kernels are run-time tensors, so backends cannot
  pre-pack them; the batch size is fixed at export. This is the naive baseline.
* ``matmul``   -- 1x1 dynamic convolutions as batched MatMul with aggregated weights
  (W_b (B, out, in) @ x (B, in, F*T)); depthwise ones grouped as above for a fixed batch, or
  expanded (below) for a dynamic batch.
* ``expanded`` -- linearity: y = sum_k a_k conv(x, W_k). One convolution with K x out channels
  and constant weights, then an attention-weighted sum. Backends see constant weights (needed by
  INT8 and TensorRT) at K times the arithmetic of those convolutions.

Every strategy but ``grouped`` also folds, in float64, the attention temperature into the
attention layer and the block's four small heads (three attentions, Dy-ReLU coefficients) into
one Linear. BatchNorms after static convs are left to the backends, which fuse them. The
BatchNorms after dynamic convolutions are not folded into the K stored kernels: that measured only
4-6 % faster (ONNX Runtime and OpenVINO, dymn04, 1 thread) but moved the seeded fixture's logits 6x
further from float64 (1.8e-4 against 2.9e-5), past the 1e-4 parity budget. ``matmul`` instead
scales the run-time aggregated 1x1 weight by the BN scale and adds the shift after the MatMul: the
same speed, parity within budget on both seeded fixtures, and one full-size activation less
(dymn10 session peak 146 -> 139 MB in ONNX Runtime).
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import nn

from dymn_edge.runtime.errors import ExportError

from ..train.layers import DynamicConv, DynamicWrapper, DyReLUB
from ..train.models.dymn import DyMN, DynamicBlock

__all__ = ["STRATEGIES", "ExportBlock", "bn_scale_shift", "prepare_for_export"]

logger = logging.getLogger(__name__)

STRATEGIES = ("grouped", "matmul", "expanded")


def bn_scale_shift(norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """An eval-mode BatchNorm as y = scale * x + shift, in float64: the caller rounds once."""
    scale = norm.weight.detach().double() / torch.sqrt(norm.running_var.double() + norm.eps)
    return scale, norm.bias.detach().double() - norm.running_mean.double() * scale


def _const(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().float().contiguous(), requires_grad=False)


class _KernelBank(nn.Module):
    """K kernels of one dynamic conv, applied in the strategy's form, followed by its BatchNorm."""

    def __init__(self, conv: DynamicConv, norm: nn.Module, mode: str) -> None:
        super().__init__()
        kernels = conv.kernels().detach()  # (K, out, in/groups, k, k)
        self.k, self.out_channels, self.groups = conv.k, conv.out_channels, conv.groups
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.shape = tuple(kernels.shape[1:])
        self.pointwise = conv.kernel_size == 1 and conv.groups == 1 and conv.stride == 1
        self.mode = mode
        self.norm = copy.deepcopy(norm)
        if mode == "matmul" and self.pointwise:
            # BN as y = scale * z + shift, with the scale applied to the per-sample 1x1 weight.
            scale, shift = bn_scale_shift(norm)
            self.register_buffer("bn_scale", scale.float().reshape(1, -1, 1))
            self.register_buffer("bn_shift", shift.float().reshape(1, -1, 1))
            self.norm = nn.Identity()
        if mode == "expanded":
            # Output channel j * out + o of one conv is kernel j's channel o. For depthwise convs the
            # K kernels of channel c must sit in group c, so they are ordered c-major instead.
            if self.groups == 1:
                static = kernels.reshape(self.k * self.out_channels, *self.shape[1:])
            else:
                static = kernels.transpose(0, 1).reshape(self.out_channels * self.k, *self.shape[1:])
            self.static = _const(static)
        else:
            self.bank = _const(kernels.reshape(self.k, -1))

    def forward(self, x: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        if self.mode == "matmul" and self.pointwise:
            b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
            weight = (attention @ self.bank).reshape(b, self.out_channels, self.shape[1]) * self.bn_scale
            y = weight @ x.reshape(b, x.shape[1], h * w) + self.bn_shift
            return y.reshape(b, self.out_channels, h, w)
        return self.norm(self._conv(x, attention))

    def _conv(self, x: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if self.mode == "expanded":
            y = F.conv2d(x, self.static, None, self.stride, self.padding, self.dilation, self.groups)
            h, w = y.shape[-2], y.shape[-1]
            if self.groups == 1:
                return (y.reshape(b, self.k, self.out_channels, h, w) * attention.reshape(b, self.k, 1, 1, 1)).sum(1)
            return (y.reshape(b, self.out_channels, self.k, h, w) * attention.reshape(b, 1, self.k, 1, 1)).sum(2)
        weight = attention @ self.bank  # (B, out * in/groups * k * k)
        # grouped: per-sample kernels with the batch folded into the groups (batch fixed at export)
        y = F.conv2d(
            x.reshape(1, -1, x.shape[-2], x.shape[-1]), weight.reshape(-1, *self.shape[1:]), None,
            self.stride, self.padding, self.dilation, self.groups * b,
        )
        return y.reshape(b, self.out_channels, y.shape[-2], y.shape[-1])


class ExportBlock(nn.Module):
    """A DynamicBlock with BN, temperature and heads folded, and dynamic convs in the chosen form."""

    def __init__(self, block: DynamicBlock, strategy: str, dynamic_batch: bool) -> None:
        super().__init__()
        self.use_res_connect = block.use_res_connect
        cg = block.context_gen
        self.joint = nn.Sequential(copy.deepcopy(cg.joint_conv), copy.deepcopy(cg.joint_norm))  # backends fold this pair
        self.conv_f, self.conv_t = copy.deepcopy(cg.conv_f), copy.deepcopy(cg.conv_t)
        self.pool_f, self.pool_t = copy.deepcopy(cg.pool_f), copy.deepcopy(cg.pool_t)
        self.coord_att = not isinstance(block.ca, DynamicWrapper)

        def conv_mode(conv: DynamicConv) -> str:
            if strategy == "expanded":
                return "expanded"
            pointwise = conv.kernel_size == 1 and conv.groups == 1
            if strategy == "matmul" and pointwise:
                return "matmul"
            return "expanded" if dynamic_batch else "grouped"

        heads_w, heads_b, self.splits = [], [], []
        self.has_exp = not (isinstance(block.exp_conv, DynamicWrapper) and isinstance(block.exp_conv.module, nn.Identity))
        stages = [("exp", block.exp_conv, block.exp_norm), ("depth", block.depth_conv, block.depth_norm), ("proj", block.proj_conv, block.proj_norm)]
        self.dynamic: list[str] = []
        for name, conv, norm in stages:
            if name == "exp" and not self.has_exp:
                continue
            if isinstance(conv, DynamicConv):
                linear = conv.residuals[0]
                heads_w.append(linear.weight.double() / conv.temperature)
                heads_b.append(linear.bias.double() / conv.temperature)
                self.splits.append(conv.k)
                setattr(self, f"{name}_conv", _KernelBank(conv, norm, conv_mode(conv)))
                self.dynamic.append(name)
            else:  # no_dyconv: a static conv + BN, which every backend fuses itself
                setattr(self, f"{name}_conv", nn.Sequential(copy.deepcopy(conv.module), copy.deepcopy(norm)))
        self.exp_act = copy.deepcopy(block.exp_act.module) if self.has_exp else nn.Identity()
        self.dyrelu = isinstance(block.depth_act, DyReLUB)
        if self.dyrelu:
            linear = block.depth_act.coef_net[0]
            heads_w.append(linear.weight.double())
            heads_b.append(linear.bias.double())
            self.splits.append(linear.out_features)
            self.channels, self.M = block.depth_act.channels, block.depth_act.M
            self.register_buffer("lambdas", block.depth_act.lambdas.clone())
            self.register_buffer("init_v", block.depth_act.init_v.clone())
        else:
            self.depth_act = copy.deepcopy(block.depth_act.module)
        self.heads = nn.Linear(heads_w[0].shape[1], sum(self.splits)) if heads_w else None
        if self.heads is not None:
            self.heads.weight = _const(torch.cat(heads_w))
            self.heads.bias = _const(torch.cat(heads_b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cf = x.mean(dim=3, keepdim=True)
        ct = x.mean(dim=2, keepdim=True).transpose(2, 3)
        f = cf.shape[2]
        joint = F.hardswish(self.joint(torch.cat([cf, ct], dim=2)))
        context = joint.mean(dim=2).flatten(1)  # (B, H)
        heads = list(torch.split(self.heads(context), self.splits, dim=1)) if self.heads is not None else []
        attention = {name: heads.pop(0).softmax(dim=1) for name in self.dynamic}

        def apply(name: str, y: torch.Tensor) -> torch.Tensor:
            conv = getattr(self, f"{name}_conv")
            return conv(y, attention[name]) if name in attention else conv(y)

        out = self.exp_act(apply("exp", x)) if self.has_exp else x
        out = apply("depth", out)
        if self.dyrelu:
            b = out.shape[0]
            coefs = (2 * heads.pop(0).sigmoid() - 1).reshape(b, self.channels, 1, 1, 2 * self.M) * self.lambdas + self.init_v
            if self.M == 2:
                out = torch.maximum(out * coefs[..., 0] + coefs[..., 2], out * coefs[..., 1] + coefs[..., 3])
            else:
                out = (out.unsqueeze(-1) * coefs[..., : self.M] + coefs[..., self.M :]).max(dim=-1).values
        else:
            out = self.depth_act(out)
        if self.coord_att:
            g_f = self.conv_f(self.pool_f(joint[:, :, :f]))
            g_t = self.conv_t(self.pool_t(joint[:, :, f:].transpose(2, 3)))
            out = out * g_f.sigmoid() * g_t.sigmoid()
        out = apply("proj", out)
        return out + x if self.use_res_connect else out


def prepare_for_export(model: nn.Module, strategy: str, *, dynamic_batch: bool) -> nn.Module:
    """A copy of ``model`` whose dynamic blocks use ``strategy``; MobileNetV3 models come back unchanged.

    Raises:
        ExportError: unknown strategy, or ``grouped`` with a dynamic batch.
    """
    if strategy not in STRATEGIES:
        raise ExportError(f"unknown export strategy {strategy!r}; expected one of {', '.join(STRATEGIES)} (or auto)")
    if not isinstance(model, DyMN):
        return model
    if strategy == "grouped":
        if dynamic_batch:
            raise ExportError("the grouped strategy folds the batch into conv groups, so it needs a fixed batch (--batch N)")
        return model
    export_model = copy.deepcopy(model).eval()
    for i, layer in enumerate(export_model.layers):
        if isinstance(layer, DynamicBlock):
            export_model.layers[i] = ExportBlock(layer, strategy, dynamic_batch)
    return export_model
