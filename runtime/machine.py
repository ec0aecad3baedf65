"""Describe the machine a measurement ran on: benchmark figures mean nothing without it.

Package versions come from installed metadata, so describing a machine never imports torch.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

__all__ = ["machine_info", "x86_without_vnni"]

_SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "neon", "asimd")
_PACKAGES = ("numpy", "onnxruntime", "onnxruntime-gpu", "openvino", "torch", "tensorrt")


def _cpuinfo() -> dict[str, str]:
    """The first processor's block of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return fields
    for line in lines:
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "cpu family", "model", "flags", "Features") and key not in fields:
            fields[key] = value.strip()
        if not line.strip() and fields:
            break
    return fields


def x86_without_vnni() -> bool:
    """True on an x86 CPU whose /proc/cpuinfo names neither AVX-512 VNNI nor AVX-VNNI.

    ONNX Runtime's integer GEMM there multiplies uint8 by int8 with vpmaddubsw, whose 16-bit pair
    sums saturate: a model calibrated with uint8 activations agrees less with FP32 (docs/calibration.md).
    False where it cannot tell (no /proc/cpuinfo) and on other architectures.
    """
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "i386"):
        return False
    flags = _cpuinfo().get("flags")
    return flags is not None and not {"avx512_vnni", "avx_vnni"} & set(flags.split())


def machine_info() -> dict:
    """CPU model and SIMD features, core count, OS, Python and the versions of the inference packages."""
    fields = _cpuinfo()
    cpu = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields:
        cpu += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    flags = (fields.get("flags") or fields.get("Features") or "").split()
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpu": cpu,
        "simd": [f for f in _SIMD_FLAGS if f in flags],
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **versions,
    }
