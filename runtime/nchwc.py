"""ONNX Runtime's blocked form of depthwise convolutions whose kernels are computed at run time.

ONNX Runtime's CPU provider moves a convolution into its blocked channel layout (NCHWc: 8 or 16
channels per block, by the CPU's vector width), where depthwise convolutions have a fast kernel,
only when the weights are constants, because it reorders them once at load. DyMN's depthwise
kernels are aggregated per input, so ONNX Runtime runs them through im2col and one GEMM per
channel: 3-4x slower than the blocked kernel at dymn10's shapes. ``nchwc_graph`` writes the same
graph with those convolutions as ONNX Runtime's own NCHWc operators (domain com.microsoft.nchwc)
and lets the operator that reorders activations reorder the kernel too, at run time: a (1, C, k, k)
tensor in NCHWc order is exactly the layout the depthwise kernel reads, whatever the block size,
so one file serves AVX2 and AVX-512 machines alike (tests/export/test_nchwc.py runs it on an
emulated AVX2 CPU when qemu-user is installed). dymn10 ``hybrid``, 1 thread, 10 s window:
20.8 -> 17.7 ms (docs/benchmarks.md).

The result runs only in ONNX Runtime, on CPUs whose build has those kernels (x86), so it ships
beside the portable model.onnx, never instead of it: the runtime tries it on the CPU provider and
falls back to model.onnx. Export writes it for FP32 bundles, calibration for ONNX Runtime INT8
ones; the tagging path never imports this module (it needs the ``onnx`` package).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["NCHWC_DOMAIN", "BlockedGraph", "nchwc_graph", "onnxruntime_logits", "runtime_kernel_shapes", "stage_nchwc", "write_nchwc"]

logger = logging.getLogger(__name__)

NCHWC_DOMAIN = "com.microsoft.nchwc"
# Channels are padded to a multiple of the largest block (AVX-512: 16 floats); AVX2's 8 divides it.
# The kernel's attributes (group) must name the padded count, so it cannot follow the machine's block.
_CHANNEL_MULTIPLE = 16


class BlockedGraph(NamedTuple):
    model: onnx.ModelProto
    rewritten: list[str]  # node names now in the blocked form
    left_out: list[str]  # run-time-kernel depthwise convolutions kept as they were, and why


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _runtime_kernel_convs(model: onnx.ModelProto) -> dict[int, onnx.NodeProto]:
    """{node index: node} of the grouped convolutions whose kernel is computed in the graph.

    A kernel that a DequantizeLinear makes is an INT8 model's quantized weight: ONNX Runtime fuses
    that convolution into an integer one, so it is left alone.
    """
    graph = model.graph
    constants = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type in ("Constant", "DequantizeLinear") for o in n.output}
    return {i: n for i, n in enumerate(graph.node) if n.op_type == "Conv" and n.domain in ("", "ai.onnx")
            and len(n.input) > 1 and n.input[1] not in constants and _attributes(n).get("group", 1) > 1}


def runtime_kernel_shapes(model: onnx.ModelProto, features: np.ndarray) -> dict[str, tuple[int, ...]]:
    """Shapes of the run-time kernels of ``model`` (weights loaded), measured by running it once on ``features``.

    ONNX's shape inference leaves them open where a Reshape with -1 builds the kernel from the
    attention's output, and whether a convolution is depthwise depends on them.
    """
    import onnxruntime as ort

    names = list(dict.fromkeys(n.input[1] for n in _runtime_kernel_convs(model).values()))
    if not names:
        return {}
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    probe.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in names)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(names, {session.get_inputs()[0].name: features})
    return {name: tuple(v.shape) for name, v in zip(names, values)}


def _is_depthwise(node: onnx.NodeProto, kernel: tuple[int, ...] | None) -> bool:
    """One input and one output channel per group, a 2-D kernel and explicit pads: what the blocked kernel runs."""
    attrs = _attributes(node)
    return (kernel is not None and len(kernel) == 4 and kernel[0] == attrs["group"] and kernel[1] == 1
            and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"))


def nchwc_graph(model: onnx.ModelProto, kernel_shapes: dict[str, tuple[int, ...]]) -> BlockedGraph:
    """``model`` with its run-time-kernel depthwise convolutions in ONNX Runtime's blocked form.

    The first strided one stays as it is: it reads the largest activation (the stem's resolution),
    and its blocked copy raised a dymn10 session's peak by 6 MB for 0.6 ms (docs/benchmarks.md).
    ``kernel_shapes``: ``runtime_kernel_shapes`` of the same graph. Other nodes, and initializers
    (external data included), are left untouched, so ``model`` may be loaded without its weights.
    A model without such convolutions comes back unchanged, with ``rewritten`` empty.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())  # a copy: the caller's model stays portable
    graph = model.graph
    depthwise = {i for i, n in _runtime_kernel_convs(model).items() if _is_depthwise(n, kernel_shapes.get(n.input[1]))}
    nodes: list[onnx.NodeProto] = []
    rewritten: list[str] = []
    left_out: list[str] = []
    strided_seen = False
    for index, node in enumerate(graph.node):
        if index not in depthwise:
            nodes.append(node)
            continue
        attrs = _attributes(node)
        strided = any(s > 1 for s in attrs.get("strides", [1]))
        if strided and not strided_seen:
            strided_seen = True
            left_out.append(f"{node.name or node.output[0]}: the first strided one (largest input)")
            nodes.append(node)
            continue
        nodes += _blocked(node, attrs, kernel_shapes[node.input[1]], prefix=f"nchwc{index}", graph=graph)
        rewritten.append(node.name or node.output[0])
    if rewritten:
        del graph.node[:]
        graph.node.extend(nodes)
        if not any(o.domain == NCHWC_DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(NCHWC_DOMAIN, 1))
    return BlockedGraph(model, rewritten, left_out)


def _blocked(node: onnx.NodeProto, attrs: dict, kernel: tuple[int, ...], *, prefix: str, graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Reorder input and kernel to NCHWc, convolve there, reorder back; channels padded with zeros."""
    channels, _, kh, kw = kernel
    padded = -(-channels // _CHANNEL_MULTIPLE) * _CHANNEL_MULTIPLE
    x, w = node.input[0], node.input[1]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None

    def const(name: str, values: list[int]) -> str:
        graph.initializer.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), f"{prefix}_{name}"))
        return f"{prefix}_{name}"

    out = [helper.make_node("Reshape", [w, const("kernel_as_image", [1, channels, kh, kw])], [f"{prefix}_w4"])]
    w4 = f"{prefix}_w4"
    if padded != channels:
        extra = padded - channels
        pad4 = const("pad_channels", [0, 0, 0, 0, 0, extra, 0, 0])
        out += [helper.make_node("Pad", [w4, pad4], [f"{prefix}_w4p"]), helper.make_node("Pad", [x, pad4], [f"{prefix}_xp"])]
        w4, x = f"{prefix}_w4p", f"{prefix}_xp"
        if bias:
            out.append(helper.make_node("Pad", [bias, const("pad_bias", [0, extra])], [f"{prefix}_bp"]))
            bias = f"{prefix}_bp"
    conv_attrs = {k: v for k, v in attrs.items() if k != "auto_pad"}
    conv_attrs["group"] = padded
    out += [
        helper.make_node("ReorderInput", [w4], [f"{prefix}_wb4"], domain=NCHWC_DOMAIN),
        helper.make_node("Reshape", [f"{prefix}_wb4", const("kernel_shape", [padded, 1, kh, kw])], [f"{prefix}_wb"]),
        helper.make_node("ReorderInput", [x], [f"{prefix}_xb"], domain=NCHWC_DOMAIN),
        helper.make_node("Conv", [f"{prefix}_xb", f"{prefix}_wb", *([bias] if bias else [])], [f"{prefix}_yb"],
                         name=node.name, domain=NCHWC_DOMAIN, **conv_attrs),
    ]
    if padded == channels:
        return out + [helper.make_node("ReorderOutput", [f"{prefix}_yb"], [node.output[0]], domain=NCHWC_DOMAIN, channels=channels)]
    # ReorderOutput may drop fewer channels than one block: with channels=72 of 80 it runs on
    # AVX-512 (block 16) but fails at run time on AVX2 (block 8), where the session still loads.
    # So it keeps every padded channel and a Slice drops the padding, whatever the block.
    return out + [
        helper.make_node("ReorderOutput", [f"{prefix}_yb"], [f"{prefix}_yp"], domain=NCHWC_DOMAIN, channels=padded),
        helper.make_node("Slice", [f"{prefix}_yp", const("keep_from", [0]), const("keep_to", [channels]), const("channel_axis", [1])],
                         [node.output[0]]),
    ]


def write_nchwc(source: str | Path, dest: str | Path, features: np.ndarray) -> BlockedGraph:
    """``nchwc_graph`` of the ONNX file ``source``, written to ``dest`` when it rewrote anything.

    Weights that ``source`` keeps as external data stay there and are referenced by the same
    relative name, so ``dest`` must sit beside ``source``'s data file.
    """
    shapes = runtime_kernel_shapes(onnx.load(str(source)), features)
    blocked = nchwc_graph(onnx.load(str(source), load_external_data=False), shapes)
    if blocked.rewritten:
        onnx.save(blocked.model, str(dest))
    return blocked


def onnxruntime_logits(path: str | Path, probes: list[np.ndarray]) -> list[np.ndarray]:
    """The logits of the ONNX file at ``path`` on each probe (CPU provider): the reference where PyTorch
    is not the one (an INT8 model.onnx, or a bundle without its checkpoint)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return [session.run(None, {name: x})[0] for x in probes]


def stage_nchwc(files: dict, probes: list[np.ndarray], expected: list[np.ndarray] | None, *, reference: str,
                atol: float) -> dict:
    """Write model.nchwc.onnx beside the staged model.onnx of ``files`` (and its model.onnx.data), check
    it, and add it to ``files`` ({name: (path, role)}, as ``write_bundle`` takes them).

    ``expected``: the logits it must match within ``atol`` on ``probes`` (``reference`` names where
    they come from: "pytorch", or "model.onnx" for an INT8 model); None skips the check, for
    throwaway exports. Returns the manifest record. When the file is left out, the record says why:
    no depthwise convolution with a float kernel computed at run time, a build of ONNX Runtime that
    cannot load it, or a parity miss.
    """
    import onnxruntime as ort

    from .backends.onnxruntime import NCHWC_FILE, NCHWC_FORMAT

    portable = files["model.onnx"][0]
    dest = portable.with_name(NCHWC_FILE)
    blocked = write_nchwc(portable, dest, probes[0])
    if not blocked.rewritten:
        return {"included": False, "reason": "no depthwise convolution with a float kernel computed at run time"}
    record = {"included": True, "file": NCHWC_FILE, "format": NCHWC_FORMAT, "rewritten": len(blocked.rewritten),
              "left_out": blocked.left_out, "reference": reference, "max_abs_logit_diff": None}
    if expected is not None:
        try:
            session = ort.InferenceSession(str(dest), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's own untyped error: no NCHWc kernels in this build
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            logger.info("no %s: this ONNX Runtime cannot run it (%s)", NCHWC_FILE, reason)
            return {"included": False, "reason": f"this machine's ONNX Runtime cannot run it: {reason}"}
        name = session.get_inputs()[0].name
        worst = max(float(np.abs(session.run(None, {name: x})[0] - e).max()) for x, e in zip(probes, expected, strict=True))
        record["max_abs_logit_diff"] = worst
        if worst > atol:
            logger.warning("%s differs from %s by %.2e in logits; left out", NCHWC_FILE, reference, worst)
            return {"included": False, "reason": f"differs from {reference} by {worst:.2e} in logits (tolerance {atol:.0e})"}
    files[NCHWC_FILE] = (dest, "onnx_nchwc")
    return record
