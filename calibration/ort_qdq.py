"""Static INT8 in QDQ format with ONNX Runtime's quantization tools, and the ranges behind it.

``quantize_qdq`` is ``onnxruntime.quantization.quantize_static`` on a pre-processed copy of the
model (shape inference and graph optimisation, as its documentation recommends), fed by the
calibration features, with per-channel weights. Two flavours share it:

* ``onnxruntime``: ONNX Runtime's own defaults for activations (asymmetric int8);
* ``tensorrt``: what TensorRT's explicit quantization accepts: symmetric int8 with zero points
  of 0, per-tensor activations, per-channel weights, standard-domain Q/DQ (see ``tensorrt.py``).

``collect_ranges`` runs the same calibrators over *every* float tensor of the FP32 model; the
TensorRT calibration cache is written from it.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import logging
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np

from dymn_edge.runtime.errors import BackendUnavailableError, CalibrationError
from dymn_edge.runtime.lint import constant_tensors

from .dataset import FeatureSet

__all__ = ["METHODS", "KEEP_FP_PRESETS", "PERCENTILE", "POINTWISE_MIN_CHANNELS", "SCOPES", "check_scope", "collect_ranges", "keep_fp_globs",
           "kernel_aggregations", "nodes_matching", "pointwise_choice", "pointwise_layers", "quantize_qdq", "run_time_weight_nodes"]

logger = logging.getLogger(__name__)

METHODS = ("minmax", "entropy", "percentile")

# The percentile method clips activation ranges at this percentile of |x|. ONNX Runtime's default
# (99.999) kept the rare outliers of mn04_as's activations: ESC-50 top-5 agreement with FP32
# 0.853, against 0.883 at 99.99 and 0.851 at 99.95 (64 pool windows; the same order on held-out
# pool audio). benchmarks/int8.py measures it.
PERCENTILE = 99.99

# What gets quantized: "pointwise" (the layers INT8 speeds up on a CPU, see pointwise_layers) or "all"
# (every operator the quantizer knows, minus --keep-fp).
SCOPES = ("pointwise", "all")

# Narrower matrix products stay in float under the "pointwise" scope. mn04_as on OpenVINO (machine C,
# Zen 5 with AVX-512 VNNI; 1 thread, 10 s window, interleaved with FP32; top-5 agreement on the 300
# ESC-50 clips): every 1x1 conv and Gemm 1.29x faster than FP32, agreement 0.897; at least 16
# channels 1.28x, 0.920; 24 or 32 channels 1.22-1.23x, 0.965; 48 channels 1.19x, 0.973. The
# narrow layers (8-16 channels, early and at high resolution) cost the most accuracy for the least time.
POINTWISE_MIN_CHANNELS = 32

# Parts of a graph that are sensitive to INT8, by the node names our exports produce.
KEEP_FP_PRESETS = {
    "attention": ["*/heads/*", "*Softmax*", "*/residuals/*", "*/coef_net/*", "*depth_act*"],  # kernel attention, Dy-ReLU heads
    "context": ["*/context_gen/*", "*/joint/*", "*/conv_f/*", "*/conv_t/*", "*ReduceMean*"],  # context generation
    "stem": ["/in_c/*", "/features.0/*"],  # the first convolution (DyMN, MobileNetV3)
    "classifier": ["/classifier/*", "*/classifier.*"],
}


def _ort_quant():
    try:
        import onnxruntime.quantization as q
    except ImportError as e:  # pragma: no cover - onnxruntime is a base dependency
        raise BackendUnavailableError("INT8 calibration needs onnxruntime's quantization tools: pip install onnxruntime") from e
    return q


def _method(name: str):
    q = _ort_quant()
    mapping = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy, "percentile": q.CalibrationMethod.Percentile}
    if name not in mapping:
        raise CalibrationError(f"unknown calibration method {name!r}; expected one of {', '.join(METHODS)}")
    return mapping[name]


class _Reader:
    """Feeds the calibration features, one window at a time (repeated to a model's fixed batch)."""

    def __init__(self, features: Iterable[np.ndarray], input_name: str, batch: int | None) -> None:
        self._items = list(features)
        self._iter = iter(self._items)
        self.input_name, self.batch = input_name, batch

    def set_range(self, start_index: int, end_index: int) -> None:
        """Serve only items [start, end): ONNX Runtime calibrates chunk by chunk (CalibStridedMinMax)."""
        self._iter = iter(self._items[start_index:end_index])

    def get_next(self):
        x = next(self._iter, None)
        if x is None:
            return None
        if self.batch and self.batch > 1:
            x = np.repeat(x, self.batch, axis=0)
        return {self.input_name: np.ascontiguousarray(x, dtype=np.float32)}

    def rewind(self) -> None:
        self._iter = iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


@contextlib.contextmanager
def _quiet():
    """ONNX Runtime's calibrators print progress with print(); keep it off the user's stdout."""
    with contextlib.redirect_stdout(io.StringIO()) as captured:
        yield
    logger.debug("onnxruntime.quantization: %s", captured.getvalue().strip())


class _NearlyConstant(Exception):
    """A histogram calibrator met a tensor it cannot bin."""


def _stride(data: FeatureSet, method: str, most: int = 8) -> int:
    """Windows per calibration chunk: the largest divisor of their count up to ``most`` (ONNX Runtime
    requires a divisor); 1 for histogram methods when windows differ in length, which stack per chunk."""
    n = len(data)
    if method != "minmax" and len({f.shape for f in data.features}) > 1:
        return 1
    return max(d for d in range(1, most + 1) if n % d == 0)


def _input(model_path: Path) -> tuple[str, int | None]:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    dim = inputs[0].type.tensor_type.shape.dim[0]
    return inputs[0].name, (dim.dim_value if dim.HasField("dim_value") else None)


def _preprocess(model_path: Path, workdir: Path) -> Path:
    import onnx

    q = _ort_quant()
    out = workdir / "preprocessed.onnx"
    try:
        # Weights inline: the pre-processor copies a model to temporary folders without its external
        # weights file, and then cannot read them (every DyMN bundle stores weights externally).
        inline = workdir / "inline.onnx"
        onnx.save(onnx.load(str(model_path), load_external_data=True), str(inline))
        q.shape_inference.quant_pre_process(str(inline), str(out), skip_symbolic_shape=True)
    except Exception as e:  # its failures are untyped; quantizing the raw model still works
        logger.warning("ONNX Runtime pre-processing failed (%s); quantizing the model as it is", e)
        return model_path
    return out


def keep_fp_globs(patterns: list[str]) -> list[str]:
    """``--keep-fp`` values as fnmatch globs: presets (``attention``, ``context``, ``stem``, ``classifier``) expanded."""
    return [g for p in patterns for g in KEEP_FP_PRESETS.get(p, [p])]


def _graph(model):
    """The graph of an ONNX model, or of the model file at a path (weights not read)."""
    import onnx

    return (model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)).graph


def kernel_aggregations(model) -> list[str]:
    """DyMN's kernel aggregations (attention softmax @ constant bank of K kernels): always left in float.

    Their output *is* a convolution kernel. Quantizing the bank per K-slice gives every channel of
    a kernel one shared scale, so small channels round to zero: the distilled dymn04_edge fell to
    top-5 agreement 0.11 (TensorRT Q/DQ) and 0.17 (NNCF) with them quantized. They are tiny GEMVs.
    ``model``: an ONNX model or its path.
    """
    graph = _graph(model)
    constants = constant_tensors(graph)
    softmax = {o for n in graph.node if n.op_type == "Softmax" for o in n.output}
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.input[0] in softmax and n.input[1] in constants]


def run_time_weight_nodes(model) -> list[str]:
    """Conv and MatMul nodes whose weights are computed at run time (DyMN's aggregated kernels).

    TensorRT runs no INT8 layer with run-time weights (``dymn-edge lint`` flags them), so its Q/DQ
    flavour leaves them in float: quantized per tensor, dymn04_edge's top-5 agreement was 0.74,
    against 0.87 with them in float. ``model``: an ONNX model or its path.
    """
    graph = _graph(model)
    constants = constant_tensors(graph)
    return [n.name for n in graph.node if n.op_type in ("Conv", "MatMul") and n.input[1] not in constants]


def run_time_affine_norms(model) -> list[str]:
    """BatchNormalization nodes whose scale or bias is computed at run time (the ``hybrid`` strategy's
    Dy-ReLU pieces), with the nodes that compute those parameters, back to the MatMul or Gemm of the
    coefficient net: all left in float.

    They are per-sample affine maps, not normalisations with weights to quantize. ONNX Runtime's
    quantizer took their parameters for activations, with one scale for all channels, and logged a
    warning for each run-time bias. On dymn04_edge ``hybrid`` (300 ESC-50 clips) top-5 agreement
    went 0.652 -> 0.669 with the BatchNorms alone in float, 0.698 with their parameter nodes too.
    The parameters are vectors per input, so the float nodes cost nothing measurable.
    ``model``: an ONNX model or its path.
    """
    graph = _graph(model)
    constants = constant_tensors(graph)
    producers = {o: n for n in graph.node for o in n.output}
    norms = [n for n in graph.node if n.op_type == "BatchNormalization" and not set(n.input[1:3]) <= constants]
    names, seen = [n.name for n in norms], set()
    pending = [t for n in norms for t in n.input[1:3] if t not in constants]
    while pending:
        node = producers.get(pending.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        names.append(node.name)
        if node.op_type not in ("MatMul", "Gemm", "Conv"):  # the coefficient net's layer ends the walk
            pending += [t for t in node.input if t and t not in constants]
    return names


def check_scope(scope: str) -> None:
    """``scope`` is one of ``SCOPES``, or a CalibrationError that names it."""
    if scope not in SCOPES:
        raise CalibrationError(f"unknown quantization scope {scope!r}; expected one of {', '.join(SCOPES)}")


def pointwise_choice(model, excluded: list[str], model_path, keep_fp: list[str], within: list[str] | None = None) -> list[str]:
    """``pointwise_layers`` outside ``excluded`` (and inside ``within``, when given): what the pointwise
    scope quantizes, for ONNX Runtime and NNCF alike. None left is an error that names ``model_path``."""
    skip = set(excluded)
    chosen = [n for n in pointwise_layers(model) if n not in skip and (within is None or n in within)]
    if not chosen:
        raise CalibrationError(f"{model_path} has no layer to quantize in the pointwise scope (1x1 convolutions and "
                               f"matrix products with constant weights, {POINTWISE_MIN_CHANNELS}+ channels"
                               + (", outside --keep-fp" if keep_fp else "") + "); use --scope all")
    return chosen


def pointwise_layers(model) -> list[str]:
    """Matrix products with constant weights, at least ``POINTWISE_MIN_CHANNELS`` wide on both sides:
    1x1 convolutions (group 1) and Gemm/MatMul. What the "pointwise" scope quantizes.

    They are where INT8 pays on a CPU. Quantized as a whole, mn04_as ran 0.82x as fast as FP32 on
    OpenVINO and 0.66x (uint8 activations) on ONNX Runtime (machine C, Zen 5 with VNNI): its
    depthwise convolutions, its stem (one input channel) and the float islands between layers
    (Hardswish, squeeze-excitation) cost more in INT8 and in Q/DQ passes than the integer kernels
    save. The 1x1 convolutions alone ran 1.22x faster than FP32 on OpenVINO, with top-5 agreement
    0.965 against 0.877. DyMN's dynamic convolutions have run-time weights, so only its static
    layers qualify, and its kernel aggregations never do.

    The classifier's Gemms are left out too: at batch 1 they are matrix-vector products, and INT8
    made no window measurably faster, while the last Gemm was the most harmful layer of all. On
    dymn04_edge (ONNX Runtime, 64 pool windows) quantized alone it put logits up to 11.4 off and
    took top-5 agreement on the 300 ESC-50 clips to 0.947; the scope with the classifier in float
    agrees 0.983 instead of 0.935 (OpenVINO 0.987 instead of 0.963; mn04_as 0.959 and 0.975
    instead of 0.951 and 0.969). ``model``: an ONNX model or its path.
    """
    import onnx
    from onnx import helper

    if not isinstance(model, onnx.ModelProto):  # read once, for this and kernel_aggregations
        model = onnx.load(str(model), load_external_data=False)
    graph = model.graph
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    shapes.update({n.output[0]: list(a.t.dims) for n in graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"})
    left_out = set(kernel_aggregations(model)) | set(nodes_matching(model, ["classifier"]))
    names = []
    for n in graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2 or n.input[1] not in shapes or n.name in left_out:
            continue
        dims = shapes[n.input[1]]
        if n.op_type == "Conv":
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            if attrs.get("group", 1) != 1 or any(d != 1 for d in dims[2:]):
                continue
            dims = dims[:2]
        if len(dims) == 2 and min(dims) >= POINTWISE_MIN_CHANNELS:
            names.append(n.name)
    return names


def nodes_matching(model, patterns: list[str]) -> list[str]:
    """Node names (or types) matching ``--keep-fp`` presets or globs. ``model``: an ONNX model or its path."""
    globs = keep_fp_globs(patterns)
    return [n.name for n in _graph(model).node if any(fnmatch.fnmatch(n.name, g) or fnmatch.fnmatch(n.op_type, g) for g in globs)]


def quantize_qdq(
    fp32_model: Path,
    out_path: Path,
    data: FeatureSet,
    *,
    method: str = "minmax",
    keep_fp: list[str] = (),
    flavour: str = "onnxruntime",
    nodes_to_quantize: list[str] | None = None,
    fallback_to_minmax: bool = False,
    activations: str = "int8",
    scope: str = "all",
) -> dict:
    """Static INT8 QDQ model at ``out_path`` (weights as external data); returns what was done.

    ``scope``: "all" quantizes every operator the quantizer supports, "pointwise" only
    ``pointwise_layers`` (``nodes_to_quantize`` narrows either); ``keep_fp`` then leaves nodes out.
    ``fallback_to_minmax``: when a histogram method fails on a nearly constant tensor, calibrate
    with min/max instead (recorded as ``fallback_from``) rather than raise.
    ``activations``: "int8" (S8S8, the more accurate) or "uint8" (U8S8: ONNX Runtime's x86 integer
    kernels take uint8 activations, so it runs faster; ONNX Runtime flavour only).
    """
    import onnx

    q = _ort_quant()
    _method(method)  # bad arguments fail before any work
    if flavour not in ("onnxruntime", "tensorrt"):
        raise CalibrationError(f"unknown QDQ flavour {flavour!r}")
    if activations not in ("int8", "uint8") or (activations == "uint8" and flavour != "onnxruntime"):
        raise CalibrationError(f"activations {activations!r} are not available for the {flavour} flavour")
    check_scope(scope)
    fallback = None
    with tempfile.TemporaryDirectory() as tmp:
        source = _preprocess(Path(fp32_model), Path(tmp))
        input_name, batch = _input(source)
        structure = onnx.load(str(source), load_external_data=False)  # read once for every node list
        excluded = nodes_matching(structure, list(keep_fp)) if keep_fp else []
        if keep_fp and not excluded:
            raise CalibrationError(f"--keep-fp {' '.join(keep_fp)} matches no node of {fp32_model}")
        always_fp = kernel_aggregations(structure) + run_time_affine_norms(structure)
        always_fp += run_time_weight_nodes(structure) if flavour == "tensorrt" else []
        excluded += [n for n in always_fp if n not in excluded]
        if scope == "pointwise":
            nodes_to_quantize = pointwise_choice(structure, excluded, fp32_model, keep_fp, within=nodes_to_quantize)
        options: dict = {"per_channel": True, "quant_format": q.QuantFormat.QDQ, "weight_type": q.QuantType.QInt8,
                         "activation_type": q.QuantType.QUInt8 if activations == "uint8" else q.QuantType.QInt8}
        # BatchNormalization after a run-time-weight conv (DyMN) cannot be folded, and ONNX Runtime
        # looks for its per-channel axis at 1, which a rank-1 scale lacks: it logged a warning per
        # node and fell back to one scale for all channels. Axis 0 gives each channel its own. On
        # dymn04_edge top-5 agreement moved within noise (3 seeds, mean 0.741 -> 0.744).
        flavour_extra: dict = {"QDQOpTypePerChannelSupportToAxis": {"BatchNormalization": 0}}
        if flavour == "tensorrt":
            # TensorRT: symmetric int8 (zero point 0) everywhere, standard-domain Q/DQ, weights as
            # int8 initializers behind a DequantizeLinear; only layers TensorRT runs in INT8.
            # Biases stay FP32: TensorRT fuses them into its INT8 kernels and its DequantizeLinear
            # takes no int32 input.
            flavour_extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "UseQDQContribOps": False, "QuantizeBias": False}
            options["op_types_to_quantize"] = ["Conv", "MatMul", "Gemm"]

        def attempt(method: str) -> None:
            # Chunks of a few windows: every intermediate tensor of a chunk is held in memory at once.
            extra = {"CalibStridedMinMax": _stride(data, method), **flavour_extra}
            if method == "percentile":
                extra["CalibPercentile"] = PERCENTILE
            try:
                with _quiet():
                    q.quantize_static(str(source), str(out_path), _Reader(data.features, input_name, batch), calibrate_method=_method(method),
                                      nodes_to_exclude=excluded, nodes_to_quantize=nodes_to_quantize, extra_options=extra,
                                      use_external_data_format=True, **options)
            except Exception as e:  # onnxruntime.quantization raises bare exceptions
                # Its histogram calibrators fail on a tensor whose values are nearly constant (numpy
                # cannot cut 2048 distinct float32 bins in its range); min/max has no histogram.
                if method != "minmax" and isinstance(e, ValueError) and "Too many bins" in str(e):
                    raise _NearlyConstant(str(e)) from e
                raise CalibrationError(f"ONNX Runtime static quantization of {fp32_model} failed: {e}") from e

        try:
            attempt(method)
        except _NearlyConstant as e:
            if not fallback_to_minmax:
                raise CalibrationError(f"{method} calibration of {fp32_model} failed on a nearly constant tensor "
                                       f"(ONNX Runtime's histogram: {e}); use --method minmax") from e
            logger.warning("%s calibration failed on a nearly constant tensor (%s); using minmax instead", method, e)
            fallback, method = method, "minmax"
            attempt(method)
    return {"method": method, "flavour": flavour, "scope": scope, "per_channel": True, "activations": activations, "weights": "int8",
            "excluded_nodes": len(excluded), **({"scope_layers": len(nodes_to_quantize)} if scope == "pointwise" else {}),
            "symmetric_activations": flavour == "tensorrt", "samples": len(data), **({"fallback_from": fallback} if fallback else {})}


def collect_ranges(fp32_model: Path, data: FeatureSet, *, method: str = "entropy") -> dict[str, tuple[float, float]]:
    """(low, high) of every float tensor of ``fp32_model`` over the calibration features."""
    _ort_quant()  # a clear error if the quantization tools are missing
    from onnxruntime.quantization.calibrate import create_calibrator

    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        inferred = Path(tmp) / "inferred.onnx"
        model = onnx.shape_inference.infer_shapes(onnx.load(str(fp32_model)))
        onnx.save_model(model, str(inferred), save_as_external_data=True, location="inferred.onnx.data")
        input_name, batch = _input(inferred)
        calibrator = create_calibrator(str(inferred), None, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=_method(method), use_external_data_format=True,
                                       extra_options={"symmetric": True} if method != "minmax" else {})
        reader = _Reader(data.features, input_name, batch)
        stride = _stride(data, method)
        with _quiet():
            for start in range(0, len(data), stride):
                reader.set_range(start, start + stride)
                calibrator.collect_data(reader)
            ranges = calibrator.compute_data()
    return {name: (float(np.asarray(t.range_value[0]).min()), float(np.asarray(t.range_value[1]).max())) for name, t in ranges.data.items()}
