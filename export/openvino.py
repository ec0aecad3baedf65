"""ONNX bundle -> OpenVINO IR bundle (``Core.read_model`` + ``save_model``).

``read_model`` is OpenVINO's C++ ONNX frontend, the same one ``convert_model`` uses for a file.
We avoid the Python ``convert_model`` entry point: after it read an ONNX model with external data,
numpy's multithreaded OpenBLAS spun forever on its next matrix product in the same process
(OpenVINO 2026.4, numpy 2.4.6; reproduced outside dymn-edge, gone with OPENBLAS_NUM_THREADS=1).

The IR keeps the ONNX model beside it (the runtime can still use ONNX Runtime) and is checked
against ONNX Runtime on the demo recording before the bundle is written. ``fp16`` compresses the
weights to half precision; the runtime then lets the device choose its inference precision.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from dymn_edge import __version__
from dymn_edge.runtime.bundle import Bundle, derived_metadata, load_bundle, write_bundle
from dymn_edge.runtime.errors import BackendUnavailableError, BundleError, ExportError

from .onnx import PARITY_ATOL, probe_features

__all__ = ["export_openvino"]

logger = logging.getLogger(__name__)

# Half-precision weights keep ~3 significant digits: on mn04_as the IR lands 0.12 from FP32 in logits
# (demo clip, CPU, f32 compute). The figure goes into the manifest; only clear breakage is refused here.
# Whether that accuracy is acceptable is what `dymn-edge validate` measures on real audio.
FP16_PARITY_ATOL = 0.25


def _ov():
    try:
        import openvino as ov
    except ImportError as e:
        raise BackendUnavailableError('OpenVINO is not installed: pip install "dymn-edge[openvino]"') from e
    return ov


def export_openvino(source: str | Path | Bundle, dest: str | Path, *, fp16: bool = False, overwrite: bool = False) -> Bundle:
    """Convert a bundle's ONNX model to OpenVINO IR and write a new bundle with both.

    Raises:
        BundleError: the source bundle has no ONNX model.
        ExportError: conversion failed, or the IR disagrees with ONNX Runtime.
    """
    ov = _ov()
    import onnxruntime as ort

    bundle = source if isinstance(source, Bundle) else load_bundle(source)
    # With --strategy auto the bundle may carry a separate ONNX file chosen for OpenVINO.
    onnx_path = bundle.file("onnx_openvino") or bundle.require("onnx", hint="; export it with `dymn-edge export onnx` first")
    if bundle.precision != "fp32":
        raise BundleError(f"{bundle.path}: OpenVINO export starts from an FP32 bundle, this one is {bundle.precision}")
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "model.xml"
        try:
            ov.save_model(ov.Core().read_model(str(onnx_path)), str(xml), compress_to_fp16=fp16)
        except Exception as e:  # OpenVINO raises RuntimeError and its own exception types
            raise ExportError(f"OpenVINO conversion of {onnx_path} failed: {e}") from e
        batch = bundle.manifest["inputs"][0]["shape"][0]
        x = probe_features(bundle.window_s, bundle.frontend)
        if isinstance(batch, int) and batch > 1:
            x = np.repeat(x, batch, axis=0)
        expected = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(["logits"], {"mel": x})[0]
        # Checked on CPU in f32, as the runtime runs it there: only the weight rounding is measured.
        compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        diff = float(np.abs(np.asarray(compiled({0: x})[compiled.outputs[0]]) - expected).max())
        budget = FP16_PARITY_ATOL if fp16 else PARITY_ATOL
        if diff > budget:
            raise ExportError(f"OpenVINO IR differs from ONNX Runtime by {diff:.2e} in logits (tolerance {budget:.0e})")
        logger.info("OpenVINO IR of %s: max |logit diff| vs ONNX Runtime %.2e", bundle.path, diff)
        files = {"model.xml": (xml, "openvino_xml"), "model.bin": (xml.with_suffix(".bin"), "openvino_bin")}
        kept = ["onnx", "onnx_data", "onnx_openvino", "onnx_openvino_data", "checkpoint"]
        # FP32 IR bundles keep the fused backend's weights (the same FP32 model); FP16 ones drop them and their record.
        if not fp16:
            kept.append("fused_weights")
        for name, entry in bundle.manifest["files"].items():
            if entry["role"] in kept:
                files[name] = (bundle.path / name, entry["role"])
        metadata = derived_metadata(bundle.manifest, keep_fused=not fp16)
        metadata["precision"] = "fp16" if fp16 else "fp32"
        metadata["openvino"] = {
            "version": ov.__version__, "compress_to_fp16": fp16, "producer": f"dymn-edge {__version__}",
            "parity": {"reference": "onnxruntime", "max_abs_logit_diff": diff},
        }
        return write_bundle(dest, files, metadata, labels=bundle.labels, overwrite=overwrite)
