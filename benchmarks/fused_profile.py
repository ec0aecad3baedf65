"""Where the fused backend spends a window: per block, context / kernels + expansion / depthwise / projection (ms).

Builds runtime/csrc/fused_dymn.c with -DPROFILE (timers around each phase) into a temporary
folder and runs a bundle's fused weights on the demo clip's 10 s log-mel, one thread.

    python benchmarks/fused_profile.py [BUNDLE] [--runs 100] [--flags "-O3 -mavx2 -mfma"]

--flags defaults to those of the build this CPU runs (AVX-512, AVX2 or generic).

BUNDLE defaults to the embedded dymn04_edge. Needs gcc; numpy only otherwise.
"""

from __future__ import annotations

import argparse
import ctypes as C
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from dymn_edge.runtime.audio import load_audio
from dymn_edge.runtime.backends import fused
from dymn_edge.runtime.bundle import load_bundle
from dymn_edge.runtime.frontend import log_mel
from dymn_edge.runtime.registry import demo_clip_path, embedded_bundle_path

SOURCE = Path(__file__).resolve().parents[1] / "runtime" / "csrc" / "fused_dymn.c"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", nargs="?", type=Path, default=embedded_bundle_path("dymn04_edge"))
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--flags", default=" ".join(["-O3", *fused.BUILD_FLAGS[fused.runnable_builds()[0]]]))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        so = Path(tmp) / "libfused_profile.so"
        subprocess.run(["gcc", *args.flags.split(), "-DPROFILE", "-pthread", "-shared", "-fPIC", str(SOURCE), "-o", str(so), "-lm"], check=True)
        lib = fused.load_library(so)
        bundle = load_bundle(args.bundle)
        x = log_mel(load_audio(demo_clip_path())).astype(np.float32)
        plan = fused._Plan(lib, fused._Weights(bundle.require("fused_weights")), x.shape[0], x.shape[1])
        for _ in range(10):
            plan.run(x)
        prof = (C.c_double * (32 * 4)).in_dll(lib, "dymn_prof")
        for i in range(32 * 4):
            prof[i] = 0.0
        start = time.perf_counter()
        for _ in range(args.runs):
            plan.run(x)
        total = (time.perf_counter() - start) / args.runs * 1e3
        ms = np.array(prof[:]).reshape(32, 4) / args.runs * 1e3
    print(f"{bundle.name}: {total:.2f} ms per window ({args.flags}); stem {ms[30, 0]:.3f} ms, head {ms[31, 0]:.3f} ms")
    print(f"{'block':>5} {'F x T in':>10} {'cin/cexp/cout':>14} {'k/s':>4} {'context':>8} {'expand':>8} {'dw':>8} {'project':>8}")
    for i, b in enumerate(plan.blocks):
        print(f"{i:>5} {f'{b.F}x{b.T}':>10} {f'{b.cin}/{b.cexp}/{b.cout}':>14} {f'{b.k}/{b.stride}':>4} "
              + " ".join(f"{v:8.3f}" for v in ms[i]))
    sums = ms[: len(plan.blocks)].sum(axis=0)
    print(f"{'all':>5} {'':>10} {'':>14} {'':>4} " + " ".join(f"{v:8.3f}" for v in sums))


if __name__ == "__main__":
    main()
