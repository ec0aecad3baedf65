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
* ``hybrid``   -- ``matmul``, plus two rewrites for ONNX Runtime's CPU kernels.
  - Strided depthwise dynamic convolutions, all but the first, become K depthwise convolutions
    with constant kernels, weighted by the attention and summed. ONNX Runtime runs a depthwise
    conv with run-time kernels through im2col and one GEMM per channel, 3-8x slower than its
    pre-packed constant-kernel path at stride 2. At stride 1 the K passes cost as much as they save.
  - Each Dy-ReLU piece a * BN(z) + b is one BatchNormalization with run-time scale and bias, with
    the depthwise BN folded in: one pass instead of three.
  dymn10 in ONNX Runtime, 1 thread, interleaved: 40.3 -> 37.5 ms (docs/benchmarks.md). OpenVINO
  runs the K convolutions slower than its run-time-kernel depthwise, so ``auto`` decides per
  backend. Bundles also carry ``runtime/nchwc.py``'s form of the graph, where ONNX Runtime runs the
  run-time depthwise kernels in its blocked kernels too; there ``matmul`` and ``hybrid`` tie. With a dynamic batch every depthwise dynamic conv takes the K-convolution form and
  Dy-ReLU stays elementwise.

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

STRATEGIES = ("grouped", "matmul", "expanded", "hybrid")


def bn_scale_shift(norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """An eval-mode BatchNorm as y = scale * x + shift, in float64: the caller rounds once."""
    scale = norm.weight.detach().double() / torch.sqrt(norm.running_var.double() + norm.eps)
    return scale, norm.bias.detach().double() - norm.running_mean.double() * scale


def _const(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().float().contiguous(), requires_grad=False)


class _KernelBank(nn.Module):
    """K kernels of one dynamic conv, applied in the strategy's form, then its BatchNorm (unless folded)."""

    def __init__(self, conv: DynamicConv, norm: nn.Module, mode: str, *, fold_norm: bool = False) -> None:
        super().__init__()
        kernels = conv.kernels().detach()  # (K, out, in/groups, k, k)
        self.k, self.out_channels, self.groups = conv.k, conv.out_channels, conv.groups
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.shape = tuple(kernels.shape[1:])
        self.pointwise = conv.kernel_size == 1 and conv.groups == 1 and conv.stride == 1
        self.mode = mode
        # fold_norm: the caller applies this BatchNorm itself (hybrid folds it into Dy-ReLU).
        self.norm = nn.Identity() if fold_norm else copy.deepcopy(norm)
        if mode == "matmul" and self.pointwise:
            # BN as y = scale * z + shift, with the scale applied to the per-sample 1x1 weight.
            scale, shift = bn_scale_shift(norm)
            self.register_buffer("bn_scale", scale.float().reshape(1, -1, 1))
            self.register_buffer("bn_shift", shift.float().reshape(1, -1, 1))
            self.norm = nn.Identity()
        if mode == "banks":
            for j in range(self.k):  # one constant kernel per initializer, so backends pre-pack each
                self.register_parameter(f"kernel{j}", _const(kernels[j]))
        elif mode == "expanded":
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
        if self.mode == "banks":
            y = None
            for j in range(self.k):
                term = F.conv2d(x, getattr(self, f"kernel{j}"), None, self.stride, self.padding, self.dilation, self.groups)
                term = term * attention[:, j].reshape(b, 1, 1, 1)
                y = term if y is None else y + term
            return y
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

    def __init__(self, block: DynamicBlock, strategy: str, dynamic_batch: bool, *, strided_banks: bool = True) -> None:
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
            if strategy in ("matmul", "hybrid") and pointwise:
                return "matmul"
            if strategy == "hybrid" and ((conv.stride > 1 and strided_banks) or dynamic_batch):
                return "banks"
            return "expanded" if dynamic_batch else "grouped"

        heads_w, heads_b, self.splits = [], [], []
        self.has_exp = not (isinstance(block.exp_conv, DynamicWrapper) and isinstance(block.exp_conv.module, nn.Identity))
        stages = [("exp", block.exp_conv, block.exp_norm), ("depth", block.depth_conv, block.depth_norm), ("proj", block.proj_conv, block.proj_norm)]
        self.dynamic: list[str] = []
        # hybrid, fixed batch: the depthwise BN goes into Dy-ReLU's two affine pieces (see forward)
        self.affine_dyrelu = (strategy == "hybrid" and not dynamic_batch and isinstance(block.depth_act, DyReLUB)
                              and block.depth_act.M == 2 and isinstance(block.depth_conv, DynamicConv))
        if self.affine_dyrelu:
            scale, shift = bn_scale_shift(block.depth_norm)
            self.register_buffer("dw_scale", scale.float())
            self.register_buffer("dw_shift", shift.float())
            self.register_buffer("zeros", torch.zeros_like(self.dw_scale))  # BN's mean and variance
            self.register_buffer("ones", torch.ones_like(self.dw_scale))
        for name, conv, norm in stages:
            if name == "exp" and not self.has_exp:
                continue
            if isinstance(conv, DynamicConv):
                linear = conv.residuals[0]
                heads_w.append(linear.weight.double() / conv.temperature)
                heads_b.append(linear.bias.double() / conv.temperature)
                self.splits.append(conv.k)
                fold = name == "depth" and self.affine_dyrelu
                setattr(self, f"{name}_conv", _KernelBank(conv, norm, conv_mode(conv), fold_norm=fold))
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
            if self.affine_dyrelu:
                out = self._affine_dyrelu(out, coefs.reshape(b, self.channels, 2 * self.M))
            elif self.M == 2:
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

    def _affine_dyrelu(self, z: torch.Tensor, coefs: torch.Tensor) -> torch.Tensor:
        """max(a1 BN(z) + b1, a2 BN(z) + b2) as two BatchNormalizations with run-time scale and bias.

        The per-sample parameters become channels of one sample, so the batch must be fixed.
        Folding coordinate attention's frequency gate in as well (one BN channel per channel and
        frequency) measured slower: dymn10 36.8 -> 37.4 ms.
        """
        b, c, h, w = z.shape
        zeros, ones = (self.zeros, self.ones) if b == 1 else (self.zeros.repeat(b), self.ones.repeat(b))
        flat = z if b == 1 else z.reshape(1, b * c, h, w)
        pieces = []
        for j in range(2):
            slope, icpt = coefs[..., j], coefs[..., 2 + j]
            scale, bias = (slope * self.dw_scale).reshape(-1), (slope * self.dw_shift + icpt).reshape(-1)
            pieces.append(F.batch_norm(flat, zeros, ones, scale, bias, False, 0.0, 0.0))
        out = torch.maximum(*pieces)
        return out if b == 1 else out.reshape(b, c, h, w)


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
    strided_seen = False
    for i, layer in enumerate(export_model.layers):
        if isinstance(layer, DynamicBlock):
            # hybrid leaves the first strided block's depthwise conv in run-time form: it reads the
            # largest activation (the stem's resolution), whose NCHWc copy for K constant convs added
            # 9 MB to a dymn10 session's peak (128 -> 137 MB) and the K passes over it cost as much
            # time as they saved (37.9 against 37.8 ms).
            export_model.layers[i] = ExportBlock(layer, strategy, dynamic_batch, strided_banks=strided_seen)
            # only DynamicConvs are banked, so only theirs count
            strided_seen = strided_seen or (isinstance(layer.depth_conv, DynamicConv) and layer.depth_conv.stride > 1)
    return export_model
