"""Weights of a DyMN or MobileNetV3 laid out for the ``fused`` runtime backend (``model.fused.npz`` in a bundle).

The runtime reads them with numpy only (runtime/backends/fused.py). Everything is float32 and
channels-last: 1x1 kernel banks (K, in, out), depthwise banks (K, k, k, C), BatchNorms as
scale and shift. DyMN kernels stay unaggregated and their BN scales separate, because the C code
aggregates the kernels per window and applies the scale after aggregation, as the ``matmul``
export does (folding BN into the banks was refused for the ONNX export on parity grounds,
docs/benchmarks.md). MobileNetV3 ("mn") kernels are static: one per convolution (K = 1), with
BN's scale folded in (float64, rounded once), as ONNX Runtime folds it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from dymn_edge.runtime.backends.fused import BLOCK_META, FUSED_FILE, KIND_DYMN, KIND_MN, LAYOUT_VERSION, MAX_K, MAX_KERNEL

from ..train.layers import ConcurrentSE, DynamicConv, DyReLUB
from ..train.models import DyMN, MobileNetV3
from .strategies import bn_scale_shift

__all__ = ["add_fused_weights", "fused_arrays", "unsupported_reason", "write_fused"]


def _mn_unsupported_reason(model: MobileNetV3) -> str | None:
    c = model.config
    if c.se_dims not in ("c", "none"):
        return f"se_dims={c.se_dims!r}: the fused code implements squeeze-excitation over channels only"
    if c.head_type != "mlp":
        return f"head_type={c.head_type!r}: the fused code implements the mlp head"
    if c.in_conv_kernel != 3 or c.in_conv_stride != 2 or c.in_channels != 1:
        return "the fused code implements the 3x3 stride-2 one-channel stem"
    if any(m.kernel_size[0] > MAX_KERNEL for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1):
        return f"depthwise kernels larger than {MAX_KERNEL}"
    return None


def unsupported_reason(model: nn.Module) -> str | None:
    """Why the fused code cannot run ``model``, or None when it can."""
    if isinstance(model, MobileNetV3):
        return _mn_unsupported_reason(model)
    if not isinstance(model, DyMN):
        return f"{type(model).__name__} has no fused implementation (DyMN and MobileNetV3 do)"
    c = model.config
    ablations = [name for name in ("no_dyrelu", "no_dyconv", "no_ca") if getattr(c, name)]
    if ablations:
        return f"the fused code implements the full DyMN block, not {', '.join(ablations)}"
    if c.use_dy_blocks != "all":
        return f"use_dy_blocks={c.use_dy_blocks!r}: the fused code needs every block dynamic"
    if c.head_type != "mlp":
        return f"head_type={c.head_type!r}: the fused code implements the mlp head"
    if c.dyrelu_k != 2:
        return f"dyrelu_k={c.dyrelu_k}: the fused code implements Dy-ReLU with two pieces"
    if c.dyconv_k > MAX_K or c.in_conv_kernel != 3 or c.in_conv_stride != 2 or c.in_channels != 1:
        return "the fused code implements the 3x3 stride-2 one-channel stem and at most 8 kernels per dynamic conv"
    if any(layer.depth_conv.kernel_size > MAX_KERNEL for layer in model.layers):
        return f"depthwise kernels larger than {MAX_KERNEL}"
    return None


def _bn(bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    scale, shift = bn_scale_shift(bn)  # the same float64 folding the matmul export uses, rounded once
    return scale.float().numpy(), shift.float().numpy()


def _linear(conv: DynamicConv) -> tuple[np.ndarray, np.ndarray]:
    return conv.residuals[0].weight.detach().numpy(), conv.residuals[0].bias.detach().numpy()


def _bank_1x1(conv: DynamicConv) -> np.ndarray:
    return conv.kernels()[:, :, :, 0, 0].permute(0, 2, 1).detach().numpy()  # (K, in, out)


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """A static convolution's kernel with BN's scale folded in (float64), channels-last, and BN's shift."""
    scale, shift = bn_scale_shift(bn)
    w = conv.weight.detach().double() * scale.view(-1, 1, 1, 1)
    if conv.groups == 1:  # 1x1: (out, in, 1, 1) -> (1, in, out)
        w = w[:, :, 0, 0].t()[None]
    else:  # depthwise: (C, 1, k, k) -> (1, k, k, C)
        w = w[:, 0].permute(1, 2, 0)[None]
    return w.float().numpy(), shift.float().numpy()


_ACT = {nn.ReLU: 1, nn.Hardswish: 2}


def _mn_blocks(model: MobileNetV3, out: dict[str, np.ndarray]) -> None:
    for i, block in enumerate(model.features[1:-1]):
        p = f"b{i}/"
        convs = [m for m in block.block if not isinstance(m, ConcurrentSE)]
        has_exp = len(convs) == 3
        dw = convs[-2][0]
        if has_exp:
            out[p + "exp_w"], out[p + "exp_shift"] = _folded(convs[0][0], convs[0][1])
        out[p + "dw_w"], out[p + "dw_shift"] = _folded(dw, convs[-2][1])
        out[p + "proj_w"], out[p + "proj_shift"] = _folded(convs[-1][0], convs[-1][1])
        se_layer = next((m.conc_se_layers[0] for m in block.block if isinstance(m, ConcurrentSE)), None)  # channel SE only
        if se_layer is not None:
            out[p + "se1_w"], out[p + "se1_b"] = se_layer.fc1.weight.t().detach().numpy(), se_layer.fc1.bias.detach().numpy()
            out[p + "se2_w"], out[p + "se2_b"] = se_layer.fc2.weight.t().detach().numpy(), se_layer.fc2.bias.detach().numpy()
        meta = {"cin": convs[0][0].in_channels, "cexp": dw.in_channels, "cout": convs[-1][0].out_channels,
                "k": dw.kernel_size[0], "stride": dw.stride[0], "dil": dw.dilation[0], "pad": dw.padding[0],
                "H": se_layer.fc1.out_features if se_layer is not None else 0, "K": 1, "residual": int(block.use_res_connect),
                "exp_act": _ACT[type(convs[0][2])] if has_exp else 0, "has_exp": int(has_exp),
                "kind": KIND_MN, "dw_act": _ACT[type(convs[-2][2])], "has_se": int(se_layer is not None)}
        out[p + "meta"] = np.array([meta[k] for k in BLOCK_META], np.int32)


def _dymn_blocks(model: DyMN, out: dict[str, np.ndarray]) -> None:
    for i, layer in enumerate(model.layers):
        p = f"b{i}/"
        dc: DynamicConv = layer.depth_conv
        temperatures = {m.temperature for m in layer.modules() if isinstance(m, DynamicConv)}
        if len(temperatures) != 1:
            raise ValueError(f"block {i}: dynamic convolutions at different temperatures {sorted(temperatures)}")
        has_exp = isinstance(layer.exp_conv, DynamicConv)
        exp_act = 0
        if has_exp:
            exp_act = 2 if isinstance(layer.exp_act.module, nn.Hardswish) else 1
        meta = {"cin": layer.context_gen.joint_conv.in_channels, "cexp": dc.in_channels, "cout": layer.proj_conv.out_channels,
                "k": dc.kernel_size, "stride": dc.stride, "dil": dc.dilation, "pad": dc.padding, "H": layer.context_dim,
                "K": dc.k, "residual": int(layer.use_res_connect), "exp_act": exp_act, "has_exp": int(has_exp),
                "kind": KIND_DYMN, "dw_act": 0, "has_se": 0}
        out[p + "meta"] = np.array([meta[k] for k in BLOCK_META], np.int32)
        out[p + "inv_temp"] = np.array([1.0 / temperatures.pop()], np.float32)
        if has_exp:
            out[p + "exp_w"] = _bank_1x1(layer.exp_conv)
            out[p + "exp_att_w"], out[p + "exp_att_b"] = _linear(layer.exp_conv)
            out[p + "exp_scale"], out[p + "exp_shift"] = _bn(layer.exp_norm)
        out[p + "dw_w"] = dc.kernels()[:, :, 0].permute(0, 2, 3, 1).detach().numpy()  # (K, k, k, C)
        out[p + "dw_att_w"], out[p + "dw_att_b"] = _linear(dc)
        out[p + "dw_scale"], out[p + "dw_shift"] = _bn(layer.depth_norm)
        dy: DyReLUB = layer.depth_act
        out[p + "dy_w"] = dy.coef_net[0].weight.t().detach().numpy()  # (H, 4C), outputs ordered (channel, piece)
        out[p + "dy_b"] = dy.coef_net[0].bias.detach().numpy()
        out[p + "lambdas"], out[p + "init_v"] = dy.lambdas.numpy(), dy.init_v.numpy()
        out[p + "proj_w"] = _bank_1x1(layer.proj_conv)
        out[p + "proj_att_w"], out[p + "proj_att_b"] = _linear(layer.proj_conv)
        out[p + "proj_scale"], out[p + "proj_shift"] = _bn(layer.proj_norm)
        cg = layer.context_gen
        out[p + "joint_w"] = cg.joint_conv.weight[:, :, 0, 0].t().detach().numpy()
        out[p + "joint_scale"], out[p + "joint_shift"] = _bn(cg.joint_norm)
        out[p + "cf_w"], out[p + "cf_b"] = cg.conv_f.weight[:, :, 0, 0].t().detach().numpy(), cg.conv_f.bias.detach().numpy()
        out[p + "ct_w"], out[p + "ct_b"] = cg.conv_t.weight[:, :, 0, 0].t().detach().numpy(), cg.conv_t.bias.detach().numpy()


def fused_arrays(model: DyMN | MobileNetV3) -> dict[str, np.ndarray]:
    """All arrays ``model.fused.npz`` holds; see runtime/backends/fused.py for how they are read."""
    reason = unsupported_reason(model)
    if reason:
        raise ValueError(reason)
    mn = isinstance(model, MobileNetV3)
    blocks = model.features[1:-1] if mn else model.layers
    out: dict[str, np.ndarray] = {"layout_version": np.array([LAYOUT_VERSION], np.int32),
                                  "n_blocks": np.array([len(blocks)], np.int32)}
    stem_conv, stem_bn = (model.features[0][0], model.features[0][1]) if mn else (model.in_c[0], model.in_c[1])
    out["stem/w"] = stem_conv.weight[:, 0].permute(1, 2, 0).detach().numpy()  # (3, 3, C0)
    out["stem/scale"], out["stem/shift"] = _bn(stem_bn)
    (_mn_blocks if mn else _dymn_blocks)(model, out)
    out_conv, out_bn = (model.features[-1][0], model.features[-1][1]) if mn else (model.out_c[0], model.out_c[1])
    fc1, fc2 = model.classifier[2], model.classifier[5]
    padded = (fc2.out_features + 7) // 8 * 8  # the C GEMM writes whole vectors of 8
    out["head/meta"] = np.array([out_conv.in_channels, out_conv.out_channels, fc1.out_features, fc2.out_features], np.int32)
    out["head/outc_w"] = out_conv.weight[:, :, 0, 0].t().detach().numpy()
    out["head/outc_scale"], out["head/outc_shift"] = _bn(out_bn)
    out["head/fc1_w"], out["head/fc1_b"] = fc1.weight.t().detach().numpy(), fc1.bias.detach().numpy()
    out["head/fc2_w"] = np.pad(fc2.weight.t().detach().numpy(), ((0, 0), (0, padded - fc2.out_features)))
    out["head/fc2_b"] = np.pad(fc2.bias.detach().numpy(), (0, padded - fc2.out_features))
    return {k: np.ascontiguousarray(v, dtype=np.int32 if v.dtype.kind == "i" else np.float32) for k, v in out.items()}


def write_fused(model: DyMN | MobileNetV3, stage: Path) -> Path:
    """``model.fused.npz`` for ``model`` under ``stage`` (uncompressed: it is read at every start)."""
    stage.mkdir(parents=True, exist_ok=True)
    path = stage / FUSED_FILE
    np.savez(path, **fused_arrays(model))
    return path


def add_fused_weights(bundle_path: str | Path, model: DyMN | MobileNetV3, probes: list[np.ndarray] | None = None):
    """Re-write a bundle exported without ``model.fused.npz`` with it added (checked against ``model`` on ``probes``).

    ``model`` must be the bundle's own checkpoint; the other files and manifest records stay as they are.
    """
    import tempfile

    from dymn_edge.runtime.bundle import derived_metadata, load_bundle, write_bundle
    from dymn_edge.runtime.errors import ExportError

    from .onnx import _family, _fused_payload, _parity_probes

    bundle = load_bundle(bundle_path)
    if bundle.family not in ("dymn", "mn"):
        raise ExportError(f"{bundle.path}: a {bundle.family} bundle; only DyMN and MobileNetV3 bundles take fused weights")
    family = _family(model)
    if family != bundle.family:
        raise ExportError(f"{bundle.path}: a {bundle.family} bundle, but the model given is a {family}; pass the bundle's own checkpoint")
    files = {name: (bundle.path / name, entry["role"]) for name, entry in bundle.manifest["files"].items()
             if entry["role"] != "fused_weights"}
    with tempfile.TemporaryDirectory() as tmp:
        probes = probes if probes is not None else _parity_probes(1, bundle.window_s)
        record = _fused_payload(model.eval(), files, Path(tmp), probes)
        if not record["included"]:
            raise ExportError(f"{bundle.path}: no fused weights: {record['reason']}")
        metadata = derived_metadata(bundle.manifest, keep_nchwc=True)
        return write_bundle(bundle.path, files, {**metadata, "fused": record}, overwrite=True)
