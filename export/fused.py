"""Weights of a DyMN laid out for the ``fused`` runtime backend (``model.fused.npz`` in a bundle).

The runtime reads them with numpy only (runtime/backends/fused.py). Everything is float32 and
channels-last: 1x1 kernel banks (K, in, out), depthwise banks (K, k, k, C), BatchNorms as
scale and shift. Kernels stay unaggregated and BN scales stay separate, because the C code
aggregates the kernels per window and applies the scale after aggregation, as the ``matmul``
export does (folding BN into the banks was refused for the ONNX export on parity grounds,
docs/benchmarks.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from dymn_edge.runtime.backends.fused import BLOCK_META, FUSED_FILE, LAYOUT_VERSION, MAX_K, MAX_KERNEL

from ..train.layers import DynamicConv, DyReLUB
from ..train.models import DyMN
from .strategies import bn_scale_shift

__all__ = ["add_fused_weights", "fused_arrays", "unsupported_reason", "write_fused"]


def unsupported_reason(model: nn.Module) -> str | None:
    """Why the fused code cannot run ``model``, or None when it can."""
    if not isinstance(model, DyMN):
        return "only DyMN models have a fused implementation"
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


def fused_arrays(model: DyMN) -> dict[str, np.ndarray]:
    """All arrays ``model.fused.npz`` holds; see runtime/backends/fused.py for how they are read."""
    reason = unsupported_reason(model)
    if reason:
        raise ValueError(reason)
    out: dict[str, np.ndarray] = {"layout_version": np.array([LAYOUT_VERSION], np.int32),
                                  "n_blocks": np.array([len(model.layers)], np.int32)}
    stem_conv, stem_bn = model.in_c[0], model.in_c[1]
    out["stem/w"] = stem_conv.weight[:, 0].permute(1, 2, 0).detach().numpy()  # (3, 3, C0)
    out["stem/scale"], out["stem/shift"] = _bn(stem_bn)
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
                "K": dc.k, "residual": int(layer.use_res_connect), "exp_act": exp_act, "has_exp": int(has_exp)}
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
    out_conv, out_bn = model.out_c[0], model.out_c[1]
    fc1, fc2 = model.classifier[2], model.classifier[5]
    padded = (fc2.out_features + 7) // 8 * 8  # the C GEMM writes whole vectors of 8
    out["head/meta"] = np.array([out_conv.in_channels, out_conv.out_channels, fc1.out_features, fc2.out_features], np.int32)
    out["head/outc_w"] = out_conv.weight[:, :, 0, 0].t().detach().numpy()
    out["head/outc_scale"], out["head/outc_shift"] = _bn(out_bn)
    out["head/fc1_w"], out["head/fc1_b"] = fc1.weight.t().detach().numpy(), fc1.bias.detach().numpy()
    out["head/fc2_w"] = np.pad(fc2.weight.t().detach().numpy(), ((0, 0), (0, padded - fc2.out_features)))
    out["head/fc2_b"] = np.pad(fc2.bias.detach().numpy(), (0, padded - fc2.out_features))
    return {k: np.ascontiguousarray(v, dtype=np.int32 if v.dtype.kind == "i" else np.float32) for k, v in out.items()}


def write_fused(model: DyMN, stage: Path) -> Path:
    """``model.fused.npz`` for ``model`` under ``stage`` (uncompressed: it is read at every start)."""
    stage.mkdir(parents=True, exist_ok=True)
    path = stage / FUSED_FILE
    np.savez(path, **fused_arrays(model))
    return path


def add_fused_weights(bundle_path: str | Path, model: DyMN, probes: list[np.ndarray] | None = None):
    """Re-write a bundle exported without ``model.fused.npz`` with it added (checked against ``model`` on ``probes``).

    ``model`` must be the bundle's own checkpoint; the other files and manifest records stay as they are.
    """
    import tempfile

    from dymn_edge.runtime.bundle import load_bundle, write_bundle
    from dymn_edge.runtime.errors import ExportError

    from .onnx import _fused_payload, _parity_probes

    bundle = load_bundle(bundle_path)
    if bundle.family != "dymn":
        raise ExportError(f"{bundle.path}: a {bundle.family} bundle; only DyMN bundles take fused weights")
    files = {name: (bundle.path / name, entry["role"]) for name, entry in bundle.manifest["files"].items()
             if entry["role"] != "fused_weights"}
    with tempfile.TemporaryDirectory() as tmp:
        probes = probes if probes is not None else _parity_probes(1, bundle.window_s)
        record = _fused_payload(model.eval(), files, Path(tmp), probes)
        if not record["included"]:
            raise ExportError(f"{bundle.path}: no fused weights: {record['reason']}")
        metadata = {k: v for k, v in bundle.manifest.items() if k not in ("format", "format_version", "files")}
        return write_bundle(bundle.path, files, {**metadata, "fused": record}, overwrite=True)
