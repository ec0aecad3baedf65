"""The fused backend's generic build on aarch64 (a Jetson's CPU), cross-compiled and run under qemu.

No aarch64 Python or numpy is at hand, so the host writes a "plan image" (the C structs with
pointers as offsets, the weights, real log-mel windows) and a small static aarch64 program
(tests/runtime/csrc/fused_image_main.c) runs fused_dymn.c on it. Its logits must match ONNX
Runtime on the host to the same 1e-4 as every other fused test. The compiler flags are setup.py's
for the generic build, plus -march=armv8.2-a (Jetson Xavier and Orin). qemu says nothing about
speed; only that the NEON code computes the right numbers.
"""

from __future__ import annotations

import ctypes as C
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dymn_edge.runtime.audio import load_audio
from dymn_edge.runtime.backends import create_backend
from dymn_edge.runtime.backends import fused as fused_module
from dymn_edge.runtime.bundle import load_bundle
from dymn_edge.runtime.frontend import log_mel
from dymn_edge.runtime.registry import demo_clip_path, embedded_bundle_path

REPO = Path(__file__).resolve().parents[2]
GCC, QEMU = "aarch64-linux-gnu-gcc", "qemu-aarch64"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cross_tools():
    """Skips where the tools are missing, unless DYMN_REQUIRE_AARCH64=1 (CI), where that fails."""
    if not (shutil.which(GCC) and shutil.which(QEMU)):
        why = f"needs {GCC} and {QEMU} (apt-get install -y gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)"
        if os.environ.get("DYMN_REQUIRE_AARCH64") == "1":
            pytest.fail(why)
        pytest.skip(why)


def _write_image(plan, windows: list[np.ndarray], path: Path, threads: int) -> None:
    """The plan's structs with each weight pointer replaced by (byte offset in the blob) + 1, then the blob and the windows."""
    arrays = [a for a in plan.weights.arrays.values() if a.dtype == np.float32]
    offsets, blob = {}, bytearray()
    for a in arrays:
        blob += bytes(-len(blob) % 64)
        offsets[a.ctypes.data] = len(blob)
        blob += a.tobytes()

    def relocate(struct_, fields):
        for name in fields:
            address = C.cast(getattr(struct_, name), C.c_void_p).value
            setattr(struct_, name, C.cast(C.c_void_p(offsets[address] + 1 if address else 0), fused_module._FP))

    blocks = (fused_module._Block * len(plan.blocks))()
    C.memmove(blocks, plan.blocks, C.sizeof(blocks))
    for b in blocks:
        relocate(b, fused_module._BLOCK_ARRAYS)
    net = fused_module._Net.from_buffer_copy(plan.net)
    relocate(net, ["stem_w", "stem_scale", "stem_shift", *fused_module._HEAD_ARRAYS])
    net.blocks, net.work, net.team, net.threads = None, None, None, threads
    header = b"DYMNIMG1" + struct.pack("<5Q", len(blocks), len(blob), len(windows), C.sizeof(net), C.sizeof(fused_module._Block))
    path.write_bytes(header + bytes(net) + bytes(blocks) + bytes(blob) + b"".join(w.astype(np.float32).tobytes() for w in windows))


@pytest.fixture(scope="module")
def aarch64_program(cross_tools, tmp_path_factory):
    exe = tmp_path_factory.mktemp("aarch64") / "fused_image"
    subprocess.run([GCC, "-O3", "-fno-wrapv", "-pthread", "-march=armv8.2-a", "-static",
                    str(REPO / "tests" / "runtime" / "csrc" / "fused_image_main.c"), "-o", str(exe), "-lm"], check=True)
    return exe


@pytest.mark.parametrize("name", ["dymn04_edge", "mn04_as"])  # DyMN blocks; MobileNetV3 blocks with SE in two passes
def test_generic_build_on_aarch64_matches_onnx_runtime(aarch64_program, name, shared, tmp_path):
    exe = aarch64_program
    bundle = load_bundle(embedded_bundle_path(name))
    clips = [demo_clip_path(), *sorted((shared / "data" / "esc50").glob("*.flac"))[:2]]
    windows = [log_mel(load_audio(p))[:, :500].astype(np.float32) for p in clips]
    backend = create_backend("fused", bundle)
    backend.infer(windows[0][None, None])
    plan = backend._plans[500]
    expected = create_backend("onnxruntime", bundle).infer(np.stack(windows)[:, None])
    for threads in (1, 2):
        image, out = tmp_path / f"plan{threads}.img", tmp_path / f"logits{threads}.f32"
        _write_image(plan, windows, image, threads)
        subprocess.run([QEMU, str(exe), str(image), str(out)], check=True, timeout=600)
        logits = np.fromfile(out, np.float32).reshape(len(windows), -1)[:, : bundle.num_classes]
        assert np.abs(logits - expected).max() < 1e-4
        assert np.abs(logits).max() > 1.0  # real activity, not a run of zeros
