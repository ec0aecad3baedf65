"""dymn-edge: train, export, quantize and run DyMN / EfficientAT audio taggers on edge devices.

The source tree keeps one top-level folder per part (runtime/, train/, export/, calibration/);
they install as subpackages of one namespace, ``dymn_edge``. The ``cli/`` folder is the
package root itself (``dymn_edge/__init__.py``, ``dymn_edge/cli.py``): only the CLI sees every part.
"""

import platform
from pathlib import Path

from setuptools import Extension, setup

ROOT = Path(__file__).parent


def _version() -> str:
    for line in (ROOT / "cli" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip("\"'")
    raise RuntimeError("__version__ not found in cli/__init__.py")


PARTS = ["runtime", "train", "export", "calibration"]
SUBPACKAGES = {
    "runtime": ["runtime.backends", "runtime.stream", "runtime.stream.sinks"],
    "train": ["train.layers", "train.models"],
}

packages = ["dymn_edge"]
package_dir = {"dymn_edge": "cli"}
for part in PARTS:
    for folder in [part] + SUBPACKAGES.get(part, []):
        name = "dymn_edge." + folder
        packages.append(name)
        package_dir[name] = folder.replace(".", "/")

TORCH = "torch>=2.1"  # install torch==2.13.0 first on machines with a local CPU wheel (see README)
extras = {
    "train": [TORCH, "onnx>=1.15", "h5py>=3.8", "tensorboard>=2.14"],
    "export": [TORCH, "onnx>=1.15", "onnxslim>=0.1.40"],
    "openvino": ["openvino>=2024.0"],
    "mic": ["sounddevice>=0.4.6"],
    "mqtt": ["paho-mqtt>=2.0"],
    "calibrate": ["nncf>=2.14", "matplotlib>=3.7"],
    "tensorrt": ["tensorrt>=8.5", "cuda-python>=12.0", "onnx>=1.15"],  # onnx: lint, Q/DQ rules and cache coverage before a build
    # cuda-python: the tests check its real answer on a machine without the NVIDIA driver.
    "dev": ["pytest>=7.4", "pytest-timeout>=2.2", "scikit-learn>=1.3", "sounddevice>=0.4.6", "paho-mqtt>=2.0", "cuda-python>=12.0"],
}
extras["all"] = sorted({req for name, reqs in extras.items() if name not in ("tensorrt", "dev") for req in reqs})

# The fused backend's C kernels (runtime/csrc/fused_dymn.c), loaded with ctypes, not imported.
# A generic build everywhere (SSE on x86-64, NEON on aarch64), and on x86-64 an AVX2/FMA build and
# an AVX-512 one (16-float GEMM tiles and depthwise rows); runtime/backends/fused.py picks the best
# the CPU runs, and its BUILD_FLAGS repeats these flags for the benchmarks that compile the C code
# themselves. Optional: without a C compiler the install still succeeds and only --backend fused is
# unavailable.
FUSED_SOURCES = ["runtime/csrc/fused_dymn.c"]
FUSED_HEADERS = ["runtime/csrc/fused_width.h"]  # included by fused_dymn.c: a change rebuilds the libraries


def _fused(name: str, flags: list[str]) -> Extension:
    return Extension(f"dymn_edge.runtime.{name}", FUSED_SOURCES, depends=FUSED_HEADERS, define_macros=[("DYMN_PYMODULE", name)],
                     extra_compile_args=["-O3", "-fno-wrapv", "-pthread", *flags], extra_link_args=["-pthread"], libraries=["m"], optional=True)


ext_modules = [_fused("_fused_dymn", [])]
if platform.machine().lower() in ("x86_64", "amd64"):
    ext_modules.append(_fused("_fused_dymn_avx2", ["-mavx2", "-mfma"]))
    ext_modules.append(_fused("_fused_dymn_avx512", ["-mavx2", "-mfma", "-mavx512f"]))

setup(
    name="dymn-edge",
    version=_version(),
    description="Edge deployment toolchain for DyMN / EfficientAT audio tagging models",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8") if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=packages,
    package_dir=package_dir,
    package_data={
        "dymn_edge.runtime": ["assets/*.csv", "assets/*.flac", "assets/*.txt", "assets/*.json", "assets/demo/*", "assets/models/*/*"],
    },
    include_package_data=False,
    install_requires=[
        "numpy>=1.23",
        "soundfile>=0.12",
        "soxr>=0.3",
        "onnxruntime>=1.16",
        "click>=8.1",
        "rich>=13.0",
    ],
    extras_require=extras,
    ext_modules=ext_modules,
    entry_points={"console_scripts": ["dymn-edge = dymn_edge.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Multimedia :: Sound/Audio :: Analysis",
    ],
)
