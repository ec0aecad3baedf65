"""OpenVINO INT8 with NNCF post-training quantization, plain or with accuracy control.

``nncf.quantize`` inserts fake-quantize operations into the OpenVINO model from statistics on
the calibration features. ``nncf.quantize_with_accuracy_control`` then also runs a validation
function and reverts the most harmful quantized operations to floating point until the metric
drop is within ``max_drop``. The metric is the validation module's: mAP against labels when they
are given, else top-5 agreement with the FP32 model.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import re
from pathlib import Path
from typing import Callable

import numpy as np

from dymn_edge.runtime.errors import BackendUnavailableError, CalibrationError

from .dataset import FeatureSet
from .ort_qdq import check_scope, keep_fp_globs, kernel_aggregations, nodes_matching, pointwise_choice

__all__ = ["quantize_openvino"]

logger = logging.getLogger(__name__)


def _nncf():
    try:
        import nncf
        import openvino as ov
    except ImportError as e:
        raise BackendUnavailableError('OpenVINO INT8 needs NNCF and OpenVINO: pip install "dymn-edge[openvino,calibrate]"') from e
    return nncf, ov


@contextlib.contextmanager
def _nncf_warnings_only():
    """NNCF logs every ignored node at INFO: with the pointwise scope that was 160 lines per model."""
    nncf_logger = logging.getLogger("nncf")
    level = nncf_logger.level
    nncf_logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        nncf_logger.setLevel(level)


def _range_estimator(nncf, method: str):
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    if method == "minmax":
        return RangeEstimatorParametersSet.MINMAX
    if method == "percentile":
        return RangeEstimatorParametersSet.MEAN_QUANTILE
    raise CalibrationError(f"calibration method {method!r} is not available for OpenVINO/NNCF; use minmax or percentile")


def quantize_openvino(
    model_path: Path,
    out_xml: Path,
    data: FeatureSet,
    *,
    method: str = "minmax",
    keep_fp: list[str] = (),
    accuracy_control: tuple[FeatureSet, Callable[[Callable[[np.ndarray], np.ndarray], FeatureSet], float], float] | None = None,
    scope: str = "all",
) -> dict:
    """Quantize an ONNX or IR model; the INT8 IR goes to ``out_xml`` (+ .bin).

    ``accuracy_control``: (validation features, metric(run, features) -> higher-is-better, max absolute drop).
    ``scope``: "all" (NNCF's choice of operators) or "pointwise" (only ``ort_qdq.pointwise_layers``;
    needs an ONNX model, whose node names NNCF's ignored scope can be given).
    """
    check_scope(scope)
    if scope == "pointwise" and Path(model_path).suffix != ".onnx":
        raise CalibrationError(f"{model_path}: the pointwise scope is resolved on an ONNX model; this is {Path(model_path).suffix or 'no'} file")
    nncf, ov = _nncf()
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    model = ov.Core().read_model(str(model_path))
    batch = model.inputs[0].get_partial_shape()[0]
    batch = batch.get_length() if batch.is_static else 1

    def feed(x: np.ndarray) -> np.ndarray:
        return np.repeat(x, batch, axis=0) if batch > 1 else x

    calibration = nncf.Dataset(data.features, feed)
    globs = keep_fp_globs(list(keep_fp))
    if Path(model_path).suffix == ".onnx":
        # Resolve --keep-fp on the ONNX graph, names and op types alike, as ONNX Runtime's path does:
        # NNCF's ignored scope sees only OpenVINO's names, so a type glob such as "Add" matched nothing.
        import onnx

        structure = onnx.load(str(model_path), load_external_data=False)  # read once for both node lists
        kept = nodes_matching(structure, list(keep_fp)) if keep_fp else []
        if keep_fp and not kept:
            raise CalibrationError(f"--keep-fp {' '.join(keep_fp)} matches no node of {model_path}")
        # DyMN's kernel aggregations stay in float for NNCF too (see ort_qdq.kernel_aggregations).
        names = kept + [n for n in kernel_aggregations(structure) if n not in kept]
        excluded = len(names)
        layers = None
        if scope == "pointwise":
            # NNCF has no list of nodes to quantize, only an ignored scope: every other node goes in it.
            chosen = set(pointwise_choice(structure, names, model_path, keep_fp))
            names = [n.name for n in structure.graph.node if n.name not in chosen and n.op_type != "Constant"]
            layers = len(chosen)
        patterns = ["^" + re.escape(name) + "(/.*)?$" for name in names]
    else:
        patterns, excluded, layers = [fnmatch.translate(g) for g in globs], None, None
    ignored = nncf.IgnoredScope(patterns=patterns, validate=False) if patterns else None
    advanced = AdvancedQuantizationParameters(activations_range_estimator_params=_range_estimator(nncf, method))
    common = {"preset": nncf.QuantizationPreset.MIXED, "subset_size": len(data), "ignored_scope": ignored}
    try:
        with _nncf_warnings_only():
            if accuracy_control is None:
                quantized = nncf.quantize(model, calibration, advanced_parameters=advanced, **common)
                control = None
            else:
                validation, metric, max_drop = accuracy_control

                def validate(compiled, _items) -> float:
                    out = compiled.outputs[0]
                    return metric(lambda x: np.asarray(compiled({0: feed(x)})[out])[:1], validation), None

                quantized = nncf.quantize_with_accuracy_control(
                    model, calibration, nncf.Dataset(validation.features, feed), validate, max_drop=max_drop,
                    drop_type=nncf.DropType.ABSOLUTE, advanced_quantization_parameters=advanced, **common)
                control = {"max_drop": max_drop, "validation_windows": len(validation)}
    except Exception as e:  # NNCF raises its own and OpenVINO's exception types
        raise CalibrationError(f"NNCF quantization of {model_path} failed: {e}") from e
    ov.save_model(quantized, str(out_xml), compress_to_fp16=False)
    return {"method": method, "tool": f"nncf {nncf.__version__}", "preset": "mixed", "scope": scope, "samples": len(data),
            "ignored_patterns": globs, "excluded_nodes": excluded, **({"scope_layers": layers} if layers else {}),
            "accuracy_control": control}
