"""TensorRT INT8 artefacts, built and checked without TensorRT: an explicit Q/DQ model and a calibration cache.

**Explicit quantization** (TensorRT 8.6+, 10.x): the ONNX model carries QuantizeLinear /
DequantizeLinear pairs and TensorRT builds INT8 layers where they say. ``check_qdq`` enforces the
rules TensorRT documents for such graphs: standard-domain Q/DQ, int8 with zero points of 0
(symmetric), positive constant scales, per-tensor activations, per-channel weights only along
the output-channel axis, and every QuantizeLinear followed by DequantizeLinear.

**Implicit quantization** (the INT8 calibrators JetPack 5's TensorRT 8.5 uses): the FP32 ONNX
model plus a calibration cache. TensorRT's cache is text: a header line
``TRT-<version>-<algorithm>`` (e.g. ``TRT-8502-EntropyCalibration2``), then one line per network
tensor, ``<tensor name>: <scale>``, the scale (amax / 127) written as the 8 hex digits of its
big-endian IEEE-754 float32. TensorRT names its tensors after the ONNX value names, and asks for a
scale for every tensor in the network, so the cache covers every float tensor of the FP32 graph
(``cache_coverage`` checks it).
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np

from .errors import CalibrationError

__all__ = ["ALGORITHMS", "cache_coverage", "check_qdq", "read_calibration_cache", "version_tag", "write_calibration_cache"]

# Our calibration method -> the TensorRT calibrator whose cache format it fills.
ALGORITHMS = {"entropy": "EntropyCalibration2", "minmax": "MinMaxCalibration", "percentile": "EntropyCalibration2"}
_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")


def version_tag(version: str) -> str:
    """NV_TENSORRT_VERSION as TensorRT prints it in the header: 8.5.2 -> 8502, 10.3.0 -> 100300."""
    try:
        major, minor, patch = ([int(p) for p in version.split(".")[:3]] + [0, 0])[:3]
    except ValueError:
        raise CalibrationError(f"TensorRT version {version!r}: expected MAJOR.MINOR[.PATCH], e.g. 8.5.2") from None
    return str(major * (10000 if major >= 10 else 1000) + minor * 100 + patch)


def write_calibration_cache(ranges: dict[str, tuple[float, float]], path: Path, *, method: str = "entropy",
                            tensorrt_version: str = "8.5.2") -> Path:
    """Write TensorRT's text cache; every tensor gets scale = max(|low|, |high|) / 127 (at least 1e-8)."""
    if method not in ALGORITHMS:
        raise CalibrationError(f"unknown calibration method {method!r}; expected one of {', '.join(ALGORITHMS)}")
    lines = [f"TRT-{version_tag(tensorrt_version)}-{ALGORITHMS[method]}"]
    for name, (low, high) in sorted(ranges.items()):
        if ":" in name or "\n" in name:
            raise CalibrationError(f"tensor name {name!r} cannot be written to a TensorRT calibration cache")
        amax = max(abs(low), abs(high))
        scale = max(float(amax) / 127.0, 1e-8)
        lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)


def read_calibration_cache(path: Path) -> tuple[str, dict[str, float]]:
    """(header, {tensor name: scale}) of a TensorRT calibration cache."""
    text = Path(path).read_text(encoding="utf-8").splitlines()
    if not text or not _HEADER.match(text[0].strip()):
        raise CalibrationError(f"{path}: not a TensorRT calibration cache (first line should be TRT-<version>-<algorithm>)")
    scales = {}
    for number, line in enumerate(text[1:], start=2):
        if not line.strip():
            continue
        name, sep, value = line.rpartition(": ")
        try:
            scales[name] = struct.unpack(">f", bytes.fromhex(value.strip()))[0]
        except (ValueError, struct.error):
            raise CalibrationError(f"{path}:{number}: expected '<tensor>: <8 hex digits>', got {line!r}") from None
        if not sep or not name:
            raise CalibrationError(f"{path}:{number}: expected '<tensor>: <8 hex digits>', got {line!r}")
    return text[0].strip(), scales


def cache_coverage(fp32_model: Path, scales: dict[str, float]) -> list[str]:
    """Float tensors of the FP32 graph (inputs and node outputs) that the cache has no scale for."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(fp32_model)))
    graph = model.graph
    floats = {vi.name for vi in list(graph.input) + list(graph.value_info) + list(graph.output)
              if vi.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}
    initializers = {t.name for t in graph.initializer}
    needed = [n for n in [i.name for i in graph.input] + [o for node in graph.node for o in node.output]
              if n in floats and n not in initializers]
    return [n for n in dict.fromkeys(needed) if n not in scales]


def check_qdq(model_path: Path) -> list[str]:
    """Violations of TensorRT's explicit-quantization rules; empty when the graph is fine."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    problems = []
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not qdq:
        problems.append("no QuantizeLinear/DequantizeLinear nodes: not an explicitly quantized model")
    for node in qdq:
        where = f"{node.name or node.output[0]} ({node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: domain {node.domain!r}; TensorRT parses only the standard-domain Q/DQ")
        scale = consts.get(node.input[1])
        if scale is None:
            problems.append(f"{where}: scale {node.input[1]!r} is not a constant")
        elif not np.all(scale > 0):
            problems.append(f"{where}: scales must be positive")
        zero = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zero is not None and (zero.dtype != np.int8 or np.any(zero != 0)):
            problems.append(f"{where}: zero point must be int8 0 (TensorRT is symmetric), got {zero.dtype} {np.unique(zero)[:3]}")
        is_weight = node.op_type == "DequantizeLinear" and node.input[0] in consts
        if scale is not None and scale.size > 1:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            users = consumers.get(node.output[0], [])
            if not is_weight:
                problems.append(f"{where}: per-channel scales on an activation; TensorRT quantizes activations per tensor")
            elif any(u.op_type == "Conv" and u.input[1] == node.output[0] for u in users) and axis != 0:
                problems.append(f"{where}: Conv weights must be quantized along axis 0 (output channels), got axis {axis}")
        if node.op_type == "QuantizeLinear" and not all(u.op_type == "DequantizeLinear" for u in consumers.get(node.output[0], [])):
            problems.append(f"{where}: a QuantizeLinear must feed DequantizeLinear nodes only")
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 13 and any(consts.get(n.input[1], np.zeros(1)).size > 1 for n in qdq):
        problems.append(f"opset {opset}: per-channel Q/DQ needs opset 13 or later")
    return problems
