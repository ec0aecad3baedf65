"""The naive baseline: what ``torch.onnx.export`` makes of a DyMN written the way EfficientAT writes it.

Our training model computes the same values as EfficientAT, but three of its forward methods were
written with export in mind: context pooling as means instead of ``adaptive_avg_pool2d``,
kernel reshapes with ``-1`` instead of sizes read from the input, and Dy-ReLU's two pieces taken
directly instead of through an extra axis. ``naive_copy`` puts EfficientAT's op sequence back
(same math, same weights) so ``dymn-edge bench`` can measure the route a user takes today
against ours. It is a benchmark reference only, never a bundle strategy.
"""

from __future__ import annotations

import copy
import types

import torch
import torch.nn.functional as F
from torch import nn

from ..train.layers import ContextGen, DynamicConv, DyReLUB

__all__ = ["export_naive", "naive_copy"]


def _context_forward(self: ContextGen, x: torch.Tensor, g=None):
    cf = F.adaptive_avg_pool2d(x, (None, 1))
    ct = F.adaptive_avg_pool2d(x, (1, None)).permute(0, 1, 3, 2)
    f, t = cf.size(2), ct.size(2)
    joint = self.joint_act(self.joint_norm(self.joint_conv(torch.cat([cf, ct], dim=2))))
    h_cf, h_ct = torch.split(joint, [f, t], dim=2)
    h_c = torch.mean(joint, dim=2, keepdim=True)
    return h_c, self.conv_f(self.pool_f(h_cf)), self.conv_t(self.pool_t(h_ct.permute(0, 1, 3, 2)))


def _dynamic_conv_forward(self: DynamicConv, x: torch.Tensor, g):
    b, c, f, t = x.size()
    attention = F.softmax(self.residuals(g[0].view(b, -1)).view(b, 1, 1, -1) / self.temperature, dim=-1)
    weight = (attention @ self.weight).transpose(1, 2).reshape(b, *self.kernel_shape)
    weight = weight.view(b * self.out_channels, *self.kernel_shape[1:])
    out = F.conv2d(x.view(1, -1, f, t), weight, None, self.stride, self.padding, self.dilation, self.groups * b)
    return out.view(b, self.out_channels, out.size(-2), out.size(-1))


def _dyrelu_forward(self: DyReLUB, x: torch.Tensor, g):
    b = x.size(0)
    coefs = (2 * self.sigmoid(self.coef_net(g[0].view(b, -1))) - 1).view(-1, self.channels, 1, 1, 2 * self.M)
    coefs = coefs * self.lambdas + self.init_v
    mapped = x.unsqueeze(-1) * coefs[..., : self.M] + coefs[..., self.M :]
    return torch.maximum(mapped[..., 0], mapped[..., 1]) if self.M == 2 else mapped.max(dim=-1)[0]


def naive_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose dynamic parts run EfficientAT's op sequence (MobileNetV3: unchanged)."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        for kind, forward in ((ContextGen, _context_forward), (DynamicConv, _dynamic_conv_forward), (DyReLUB, _dyrelu_forward)):
            if isinstance(module, kind):
                module.forward = types.MethodType(forward, module)
    return model


def export_naive(model: nn.Module, path, features: torch.Tensor, *, opset: int = 17):
    """``torch.onnx.export`` of the naive copy with a fixed input shape, as a user does it: no
    dynamic axes (``adaptive_avg_pool2d`` cannot export with a dynamic frame axis), no rewrites,
    no simplification."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(naive_copy(model), (features,), str(path), dynamo=False, opset_version=opset,
                          input_names=["mel"], output_names=["logits", "embedding"])
    return path
