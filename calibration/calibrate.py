"""FP32 bundle + calibration audio -> INT8 bundle for one backend; and per-layer sensitivity.

* ``onnxruntime``: a static QDQ model (``ort_qdq``), run by the runtime's ONNX Runtime backend.
* ``openvino``: an NNCF-quantized IR (``nncf_ov``), optionally with accuracy control.
* ``tensorrt``: an explicitly quantized Q/DQ model that TensorRT 8.6+/10 builds directly, the FP32
  model, and a calibration cache in TensorRT's format for the implicit INT8 calibrators of
  TensorRT 8.5 (JetPack 5), both from the same audio (``runtime.tensorrt_int8``). The Q/DQ model must pass
  TensorRT's explicit-quantization rules and the cache must cover every tensor, or nothing is written.

The INT8 bundle records how it was made (backend, method, samples, files, excluded parts, tool
versions) and is linted for INT8.
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path

import numpy as np

from dymn_edge import __version__
from dymn_edge.runtime.bundle import INT8_PREFERENCE, Bundle, derived_metadata, load_bundle, onnx_payload, write_bundle
from dymn_edge.runtime.errors import BundleError, CalibrationError

from .dataset import FeatureSet, build_feature_set
from .ort_qdq import check_scope, collect_ranges, pointwise_layers, quantize_qdq

__all__ = ["BACKENDS", "DEFAULT_METHODS", "DEFAULT_SCOPES", "calibrate_bundle", "sensitivity"]

logger = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "openvino", "tensorrt")

# The calibration method each backend gets unless one is named: the best top-5 agreement with
# FP32 for mn04_as on held-out pool audio and on ESC-50 (docs/benchmarks.md, INT8 section).
# Percentile clipping helps ONNX Runtime's QDQ and the symmetric TensorRT flavour (0.84 -> 0.88,
# 0.73 -> 0.84); NNCF's quantile estimator hurts OpenVINO (0.82 -> 0.73), which keeps min/max.
DEFAULT_METHODS = {"onnxruntime": "percentile", "openvino": "minmax", "tensorrt": "percentile"}

NCHWC_ATOL = 1e-4  # model.nchwc.onnx against the INT8 model.onnx: the same quantized tensors, float rounding apart

# What each backend quantizes unless told (ort_qdq.SCOPES). On CPUs only the wide 1x1 convolutions
# and matrix products gain from INT8 (ort_qdq.pointwise_layers): quantized alone, mn04_as runs
# 1.22x faster than FP32 on OpenVINO where the whole model ran 0.82x, and agrees better with FP32.
# TensorRT picks each layer's precision itself from the Q/DQ it is given, and GPUs run depthwise
# convolutions in INT8 well, so it gets every layer it can run in INT8.
DEFAULT_SCOPES = {"onnxruntime": "pointwise", "openvino": "pointwise", "tensorrt": "all"}


def _metric_top5_agreement(reference_logits: np.ndarray):
    from dymn_edge.runtime.metrics import top5_overlap

    def metric(run, features: FeatureSet) -> float:
        return float(top5_overlap(reference_logits, np.concatenate([run(x) for x in features.features])).mean())
    return metric


def _metric_map(targets: np.ndarray):
    from .validate import labelled_metrics

    def metric(run, features: FeatureSet) -> float:
        return labelled_metrics(np.concatenate([run(x) for x in features.features]), targets)["map"]
    return metric


def calibrate_bundle(
    source: str | Path | Bundle,
    audio: str | Path,
    dest: str | Path,
    *,
    backend: str = "onnxruntime",
    method: str | None = None,
    activations: str = "int8",
    keep_fp: list[str] = (),
    scope: str | None = None,
    samples: int | None = None,
    seed: int = 0,
    accuracy_control: bool = False,
    validation_audio: str | Path | None = None,
    max_drop: float = 0.01,
    tensorrt_version: str = "8.5.2",
    overwrite: bool = False,
    progress: bool = True,
) -> Bundle:
    """Write an INT8 bundle for ``backend`` at ``dest``; see the module docstring.

    ``scope``: "pointwise" or "all" (``ort_qdq.SCOPES``); None takes the backend's ``DEFAULT_SCOPES``.
    """
    if backend not in BACKENDS:
        raise CalibrationError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    defaulted, method = method is None, method or DEFAULT_METHODS[backend]
    scope = scope or DEFAULT_SCOPES[backend]
    check_scope(scope)
    if activations not in ("int8", "uint8"):
        raise CalibrationError(f"unknown activation type {activations!r}; expected int8 or uint8")
    if activations == "uint8" and backend != "onnxruntime":
        raise CalibrationError(f"uint8 activations are an ONNX Runtime option; {backend} quantizes activations as int8"
                               + (" (TensorRT supports only symmetric int8)" if backend == "tensorrt" else " (NNCF picks the type)"))
    if accuracy_control and backend != "openvino":
        raise CalibrationError("--accuracy-control is NNCF's: it needs --backend openvino")
    if accuracy_control and validation_audio is None:
        raise CalibrationError("--accuracy-control needs --validation-audio (files disjoint from the calibration audio)")
    bundle = source if isinstance(source, Bundle) else load_bundle(source)
    if bundle.precision != "fp32":
        raise BundleError(f"{bundle.path}: calibration starts from an FP32 bundle; this one is {bundle.precision}")
    bundle.require("onnx", hint="; export it with `dymn-edge export onnx` first")
    onnx_path, strategy = bundle.int8_source(backend)
    # Measured on dymn04_edge (docs/calibration.md): with every layer quantized, grouped agrees best.
    # In the pointwise scope only the static layers are INT8, alike in grouped, matmul and hybrid
    # (top-5 agreement 0.937 / 0.941 / 0.945 on ONNX Runtime); expanded still adds its K-fold
    # convolutions to the scope and agrees less (0.930), at 3x the latency.
    if bundle.family == "dymn" and strategy != INT8_PREFERENCE[0] and (scope == "all" or strategy == "expanded"):
        logger.warning("%s was exported with the %s strategy, which quantizes less accurately than %s (docs/calibration.md); "
                       "export it with --strategy %s (fixed batch) or auto for a better INT8 model", bundle.path, strategy,
                       INT8_PREFERENCE[0], INT8_PREFERENCE[0])
    data = build_feature_set(audio, config=bundle.frontend, window_s=bundle.window_s, labels=bundle.labels,
                             samples=samples, seed=seed, progress=progress)
    logger.info("calibrating on %d windows from %d files (%d skipped)", len(data), len(data.files), len(data.skipped))
    extra: dict = {}
    nchwc_record = None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if backend == "onnxruntime":
            info = quantize_qdq(onnx_path, tmp / "model.onnx", data, method=method, keep_fp=list(keep_fp), fallback_to_minmax=defaulted,
                                activations=activations, scope=scope)
            files = onnx_payload(tmp / "model.onnx", tmp, "model.onnx", "onnx")
            nchwc_record = _nchwc_payload(files, data, bundle.manifest["inputs"][0]["shape"][0]) if bundle.family == "dymn" else None
        elif backend == "openvino":
            from .nncf_ov import quantize_openvino

            control = None
            if accuracy_control:
                validation = build_feature_set(validation_audio, config=bundle.frontend, window_s=bundle.window_s,
                                               labels=bundle.labels, progress=progress)
                overlap = set(validation.files) & set(data.files)
                if overlap:
                    raise CalibrationError(f"calibration and validation audio share {len(overlap)} file(s), e.g. {sorted(overlap)[0]}")
                if validation.targets is not None and validation.targets.any():
                    metric = _metric_map(validation.targets)
                else:
                    from .validate import run_model

                    metric = _metric_top5_agreement(run_model(bundle, validation, timed_runs=0).logits)
                control = (validation, metric, max_drop)
            info = quantize_openvino(onnx_path, tmp / "model.xml", data, method=method, keep_fp=list(keep_fp), accuracy_control=control,
                                     scope=scope)
            files = {"model.xml": (tmp / "model.xml", "openvino_xml"), "model.bin": (tmp / "model.bin", "openvino_bin")}
        else:
            from dymn_edge.runtime.tensorrt_int8 import cache_coverage, check_qdq, read_calibration_cache, write_calibration_cache

            info = quantize_qdq(onnx_path, tmp / "model.onnx", data, method=method, keep_fp=list(keep_fp), flavour="tensorrt",
                                fallback_to_minmax=defaulted, scope=scope)
            problems = check_qdq(tmp / "model.onnx")
            if problems:
                raise CalibrationError("the Q/DQ model breaks TensorRT's explicit-quantization rules: " + "; ".join(problems[:5]))
            cache_method = method if method in ("entropy", "minmax") else "entropy"
            ranges = collect_ranges(onnx_path, data, method=cache_method)
            cache = write_calibration_cache(ranges, tmp / "calibration.cache", method=cache_method, tensorrt_version=tensorrt_version)
            header, scales = read_calibration_cache(cache)
            missing = cache_coverage(onnx_path, scales)
            if missing:
                raise CalibrationError(f"the calibration cache misses {len(missing)} tensor(s), e.g. {missing[:3]}")
            files = {**onnx_payload(tmp / "model.onnx", tmp, "model.onnx", "onnx"),
                     **onnx_payload(onnx_path, tmp, "model.fp32.onnx", "onnx_fp32"),
                     "calibration.cache": (cache, "calibration_cache")}
            extra["tensorrt"] = {"explicit_qdq": "model.onnx (TensorRT 8.6+/10: build it as it is)",
                                 "implicit": "model.fp32.onnx + calibration.cache (TensorRT 8.5 INT8 calibrator)",
                                 "cache_header": header, "cache_tensors": len(scales)}
        # The FP32 bundle's per-backend strategy choice does not describe this model: one strategy was quantized.
        # Nor do its fused weights, which stay behind (the fused backend runs FP32).
        metadata = derived_metadata(bundle.manifest, drop=("lint", "openvino", "parity", "strategy_choice"))
        metadata["precision"] = "int8"
        if nchwc_record:
            metadata["nchwc"] = nchwc_record
        if bundle.family == "dymn":
            metadata["export_strategy"] = strategy
        metadata["quantization"] = {
            "backend": backend, **info, "export_strategy": strategy, "windows": len(data), "files": len(data.files), "skipped_files": [p for p, _ in data.skipped],
            "audio": str(audio), "seed": seed, "keep_fp": list(keep_fp), "source_bundle": bundle.name,
            "producer": f"dymn-edge {__version__}", **extra,
        }
        out = write_bundle(dest, files, metadata, labels=bundle.labels, overwrite=overwrite)
    if out.file("onnx") is not None:
        from dymn_edge.runtime.lint import lint_bundle

        lint_bundle(out, ["tensorrt", "onnxruntime"] if backend == "tensorrt" else ["onnxruntime"], int8=True)
        out = load_bundle(out.path)
    return out


def _nchwc_payload(files: dict, data: FeatureSet, batch: int | None) -> dict:
    """Add model.nchwc.onnx (runtime/nchwc.py) for the depthwise convolutions the INT8 model keeps in float
    with kernels computed at run time, checked against the INT8 model.onnx itself on two calibration windows.
    ``batch``: the model's fixed batch (the source manifest's), None for a dynamic one."""
    from dymn_edge.runtime.nchwc import onnxruntime_logits, stage_nchwc

    batch = batch if isinstance(batch, int) else 1
    probes = [np.concatenate(data.features[i : i + batch]) for i in range(0, min(len(data), 2 * batch) - batch + 1, batch)]
    expected = onnxruntime_logits(files["model.onnx"][0], probes)
    # Both graphs quantize the same tensors with the same scales; only float rounding may differ.
    return stage_nchwc(files, probes, expected, reference="model.onnx", atol=NCHWC_ATOL)


def _group(node_name: str) -> str:
    match = re.match(r"^/([^/]+)/", node_name)
    return match.group(1) if match else "other"


def sensitivity(source: str | Path | Bundle, calibration: FeatureSet, validation: FeatureSet, *, method: str = DEFAULT_METHODS["onnxruntime"],
                scope: str = DEFAULT_SCOPES["onnxruntime"], progress: bool = True) -> list[dict]:
    """Quantize one part of the graph at a time (ONNX Runtime QDQ) and measure the damage on ``validation``.

    Parts are the model's top-level modules (stem, each block, final conv, classifier); with the
    "pointwise" scope only their layers in that scope are quantized, and parts with none are left
    out. Returned most harmful first: top-5 agreement with FP32, mean KL and max logit error.
    """
    import onnx

    from .validate import fidelity, run_model

    bundle = source if isinstance(source, Bundle) else load_bundle(source)
    bundle.require("onnx")
    onnx_path, _ = bundle.int8_source("onnxruntime")  # the model calibration would quantize
    model = onnx.load(str(onnx_path), load_external_data=False)
    in_scope = set(pointwise_layers(model)) if scope == "pointwise" else None
    groups: dict[str, list[str]] = {}
    for node in model.graph.node:
        if in_scope is None or node.name in in_scope:
            groups.setdefault(_group(node.name), []).append(node.name)
    reference = run_model(bundle, validation, timed_runs=0)
    rows = []
    from rich.progress import Progress

    with Progress(transient=True, disable=not progress) as bar, tempfile.TemporaryDirectory() as tmp:
        task = bar.add_task("sensitivity", total=len(groups))
        for name, nodes in groups.items():
            dest = Path(tmp) / name
            try:
                quantize_qdq(onnx_path, Path(tmp) / f"{name}.onnx", calibration, method=method, nodes_to_quantize=nodes, scope=scope)
            except CalibrationError as e:
                logger.warning("sensitivity: %s could not be quantized alone (%s)", name, e)
                bar.advance(task)
                continue
            metadata = derived_metadata(bundle.manifest, drop=("lint",))
            files = onnx_payload(Path(tmp) / f"{name}.onnx", Path(tmp) / f"{name}-stage", "model.onnx", "onnx")
            part = write_bundle(dest, files, {**metadata, "precision": "int8", "name": f"{bundle.name}[{name}]"}, labels=bundle.labels)
            fid = fidelity(reference, run_model(part, validation, timed_runs=0))
            rows.append({"part": name, "nodes": len(nodes), "top5_agreement": fid["top5_agreement"],
                         "top1_agreement": fid["top1_agreement"], "mean_kl": fid["mean_kl"], "max_logit_error": fid["max_logit_error"]})
            bar.advance(task)
    return sorted(rows, key=lambda r: (r["top5_agreement"], -r["mean_kl"]))
