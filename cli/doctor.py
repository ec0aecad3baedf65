"""``dymn-edge doctor [BUNDLE]``: what this device can run, and whether a bundle gives the same logits everywhere.

The first command to run on a new device (a Jetson above all). It reports each backend and device
(ONNX Runtime's execution providers, OpenVINO's devices, TensorRT's version, the CUDA device,
audio inputs) and, given a bundle, runs it on every backend available here and compares the logits
with ONNX Runtime on the CPU, the reference. A component that is missing is reported with the
reason, never raised: finding out what is missing is the point. The exit code is 1 only when a
backend that runs gives logits outside the tolerance for its precision, or fails to run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import click
import numpy as np

from dymn_edge import __version__
from dymn_edge.bundle_param import BUNDLE_OR_EMBEDDED
from dymn_edge.runtime.errors import DymnEdgeError

__all__ = ["PARITY_ATOL", "check_bundle", "doctor", "probe_components"]

# Max |logit diff| against ONNX Runtime CPU that counts as agreement, by what runs. FP32 on a CPU
# is ~1e-5, and ONNX Runtime's CUDA provider, which the runtime opens without TF32, measured at most
# 2.3e-4 on an H200 (docs/benchmarks.md). TensorRT runs FP32 convolutions in TF32 by default
# (Ampere and later): with TF32 ONNX Runtime's CUDA provider moved logits by up to 0.16 on a seeded
# fixture, 0.022 on mn04_as. FP16 keeps ~3 significant digits (OpenVINO FP16 IR of mn04: 0.12,
# docs/calibration.md). INT8 is judged on real audio by `dymn-edge validate`, so doctor reports it
# without a verdict. The TF32 and FP16 figures for TensorRT are budgets: no engine has run.
PARITY_ATOL = {"fp32": 1e-3, "tf32": 0.05, "fp16": 0.25, "int8": None}
# Problems a probe reports instead of raising (missing packages, libraries, drivers, devices).
_PROBE_ERRORS = (ImportError, OSError, RuntimeError, DymnEdgeError)


def _probe(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return {"available": True, **fn()}
    except _PROBE_ERRORS as e:
        return {"available": False, "reason": str(e).splitlines()[0] if str(e) else type(e).__name__}


def _onnxruntime() -> dict[str, Any]:
    import onnxruntime as ort

    return {"version": ort.__version__, "providers": ort.get_available_providers()}


def _openvino() -> dict[str, Any]:
    try:
        import openvino as ov
    except ImportError as e:
        raise ImportError(f'not installed (pip install "dymn-edge[openvino]"): {e}') from e
    return {"version": ov.__version__, "devices": list(ov.Core().available_devices)}


def _tensorrt() -> dict[str, Any]:
    from dymn_edge.runtime.backends.tensorrt import api_generation, import_tensorrt

    trt = import_tensorrt()
    return {"version": trt.__version__, "api": api_generation(trt.__version__)}


def _fused() -> dict[str, Any]:
    from dymn_edge.runtime.backends.fused import library_variant

    variant, path = library_variant()
    return {"build": variant, "library": path.name}


def _cuda() -> dict[str, Any]:
    from dymn_edge.runtime.cuda import cuda_device

    return {"device": cuda_device(0).to_json()}


def _audio_inputs() -> dict[str, Any]:
    from dymn_edge.runtime.stream.capture import input_devices

    return {"devices": input_devices()}


def probe_components() -> dict[str, dict[str, Any]]:
    """Each backend and device: ``{"available": bool, ...details or "reason"}``."""
    return {"onnxruntime": _probe(_onnxruntime), "openvino": _probe(_openvino), "tensorrt": _probe(_tensorrt),
            "fused": _probe(_fused), "cuda": _probe(_cuda), "audio_inputs": _probe(_audio_inputs)}


def _candidates(components: dict[str, dict[str, Any]], bundle) -> list[tuple[str, str, Callable[[], Any]]]:
    """(backend, device, opener) for every way this machine can run the bundle."""
    from dymn_edge.runtime.backends import check_against_manifest, create_backend
    from dymn_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend

    def ort_provider(provider: str):
        def open_():
            backend = OnnxRuntimeBackend(bundle.require("onnx"), providers=[provider, "CPUExecutionProvider"])
            check_against_manifest(backend, bundle)
            return backend
        return open_

    out = []
    providers = components["onnxruntime"].get("providers", [])
    for provider, device in (("CUDAExecutionProvider", "CUDA"), ("TensorrtExecutionProvider", "TensorRT EP")):
        if provider in providers and bundle.file("onnx") is not None:
            out.append(("onnxruntime", device, ort_provider(provider)))
    for device in components["openvino"].get("devices", []):
        out.append(("openvino", device, lambda d=device: create_backend("openvino", bundle, device=d)))
    if components["fused"]["available"] and bundle.file("fused_weights") is not None:
        out.append(("fused", "CPU", lambda: create_backend("fused", bundle)))
    if components["tensorrt"]["available"]:
        out.append(("tensorrt", (components["cuda"].get("device") or {}).get("name", "CUDA"), lambda: create_backend("tensorrt", bundle)))
    return out


def _tolerance(backend: str, device: str, bundle) -> float | None:
    precision = bundle.precision
    if backend == "tensorrt":
        precision = (bundle.manifest.get("tensorrt") or {}).get("precision", precision)
    if precision in ("fp16", "int8"):
        return PARITY_ATOL[precision]
    full_fp32 = device.upper().startswith("CPU") or (backend, device) == ("onnxruntime", "CUDA")
    return PARITY_ATOL["fp32" if full_fp32 else "tf32"]


def _timed(backend, x: np.ndarray) -> tuple[np.ndarray, float]:
    backend.infer(x)  # warm-up: first runs allocate and (TensorRT, CUDA) pick kernels
    started = time.perf_counter()
    logits = backend.infer(x)
    return logits, (time.perf_counter() - started) * 1000


def check_bundle(bundle_path: Path, components: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Run the bundle on each available backend; each row has the logit difference to ONNX Runtime CPU."""
    from dymn_edge.runtime.audio import load_audio, seconds_to_samples
    from dymn_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from dymn_edge.runtime.bundle import load_bundle
    from dymn_edge.runtime.frontend import log_mel
    from dymn_edge.runtime.registry import demo_clip_path

    bundle = load_bundle(bundle_path)
    reference_model = bundle.file("onnx_fp32") if bundle.precision == "int8" and bundle.file("tensorrt_engine") else None
    reference = OnnxRuntimeBackend(reference_model or bundle.require("onnx", hint="; doctor compares every backend with ONNX Runtime CPU"),
                                   providers=["CPUExecutionProvider"])
    sr = bundle.frontend.sample_rate_hz
    x = log_mel(load_audio(demo_clip_path(), sr)[: seconds_to_samples(bundle.window_s, sr)], bundle.frontend)[None, None]
    if reference.max_batch and reference.max_batch > 1:
        x = np.repeat(x, reference.max_batch, axis=0)
    expected, ms = _timed(reference, x)
    rows = [{"backend": "onnxruntime", "device": "CPU", "status": "reference", "max_abs_logit_diff": 0.0, "ms": ms, "detail": ""}]
    for name, device, open_backend in _candidates(components, bundle):
        row: dict[str, Any] = {"backend": name, "device": device, "max_abs_logit_diff": None, "ms": None, "detail": ""}
        try:
            logits, row["ms"] = _timed(open_backend(), x)
        except DymnEdgeError as e:
            rows.append({**row, "status": "error", "detail": str(e)})
            continue
        diff = float(np.abs(logits - expected).max())
        tolerance = _tolerance(name, device, bundle)
        status = "measured" if tolerance is None else "ok" if diff <= tolerance else "differs"
        rows.append({**row, "status": status, "max_abs_logit_diff": diff,
                     "detail": "INT8: judge it with `dymn-edge validate`" if tolerance is None else f"tolerance {tolerance:g}"})
    return rows


def _print(components: dict[str, dict[str, Any]], bundle: Path | None, rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(soft_wrap=False, highlight=False)
    table = Table(title="backends and devices")
    for column in ("component", "status", "details"):
        table.add_column(column)
    for name, info in components.items():
        details = {k: v for k, v in info.items() if k != "available"}
        if name == "audio_inputs" and info["available"]:
            details = "; ".join(f"{d['index']}: {d['name']}{' (default)' if d['default'] else ''}" for d in info["devices"]) or "none found"
        elif name == "cuda" and info["available"]:
            d = info["device"]
            details = f"{d['name']}, compute capability {d['compute_capability']}, {d['total_memory_bytes'] / 2**30:.1f} GiB, driver {d['driver_version']}"
        else:
            details = info.get("reason") or ", ".join(f"{k} {v if not isinstance(v, list) else ' '.join(map(str, v))}" for k, v in details.items())
        table.add_row(name, "[green]available[/]" if info["available"] else "[yellow]missing[/]", escape(str(details)))
    console.print(table)
    if bundle is None:
        return
    runs = Table(title=f"{bundle} on each backend (reference: ONNX Runtime CPU, demo clip)")
    for column, justify in (("backend", "left"), ("device", "left"), ("status", "left"), ("max |Δ logit|", "right"), ("ms", "right"), ("", "left")):
        runs.add_column(column, justify=justify)
    colours = {"ok": "green", "reference": "cyan", "measured": "cyan", "differs": "red", "error": "red"}
    for r in rows:
        diff = "" if r["max_abs_logit_diff"] is None else f"{r['max_abs_logit_diff']:.1e}"
        ms = "" if r["ms"] is None else f"{r['ms']:.1f}"
        runs.add_row(r["backend"], r["device"], f"[{colours[r['status']]}]{r['status']}[/]", diff, ms, escape(r["detail"]))
    console.print(runs)


@click.command()
@click.argument("bundle", required=False, type=BUNDLE_OR_EMBEDDED)
@click.option("--json", "as_json", is_flag=True, help="Print the findings as one JSON object.")
def doctor(bundle, as_json):
    """Show which backends and devices this machine has; with BUNDLE, run it on each and compare with ONNX Runtime CPU."""
    components = probe_components()
    rows = check_bundle(bundle, components) if bundle is not None else []
    if as_json:
        click.echo(json.dumps({"dymn_edge": __version__, "components": components, "bundle": str(bundle) if bundle else None,
                               "runs": rows}, indent=2))
    else:
        _print(components, bundle, rows)
    if any(r["status"] in ("differs", "error") for r in rows):
        raise click.exceptions.Exit(1)
