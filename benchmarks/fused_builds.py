"""The fused backend's builds side by side: each compiled variant this CPU runs, and optionally the
C source of an earlier commit, timed interleaved in one process on the same windows.

    python benchmarks/fused_builds.py [BUNDLE...] [--rounds 16] [--threads 1] [--against REV]

Each variant gets two plans (two workspaces), used in turn, so that one unlucky allocation does
not decide a comparison. Prints the median ms per window, the ratio to the first variant, and the
largest logit difference to it (0.0: bit-identical). The AVX2 and AVX-512 builds must agree bit
for bit. --against REV compiles runtime/csrc/ of that git commit with each installed variant's
flags (as setup.py does), to time one change against the code before it.

BUNDLE defaults to the embedded dymn04_edge and mn04_as. Needs numpy; gcc and git for --against.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from dymn_edge.export.auto import interleaved_medians
from dymn_edge.runtime.audio import load_audio
from dymn_edge.runtime.backends import fused
from dymn_edge.runtime.frontend import log_mel
from dymn_edge.runtime.registry import demo_clip_path, embedded_bundle_path

REPO = Path(__file__).resolve().parents[1]


def _installed() -> dict[str, Path]:
    """{variant: library path} of the installed builds this CPU runs, fastest first."""
    paths = {variant: fused.library_path(variant) for variant in fused.runnable_builds()}
    return {variant: path for variant, path in paths.items() if path is not None}


def _compile_rev(rev: str, variants: list[str], out: Path) -> dict[str, Path]:
    """runtime/csrc/ at git commit rev, compiled once per variant with setup.py's flags."""
    src = out / f"csrc-{rev}"
    src.mkdir()
    listing = subprocess.run(["git", "-C", str(REPO), "ls-tree", "--name-only", rev, "runtime/csrc/"],
                             check=True, capture_output=True, text=True).stdout.split()
    for name in listing:
        blob = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{name}"], check=True, capture_output=True).stdout
        (src / Path(name).name).write_bytes(blob)
    libs = {}
    for variant in variants:
        so = out / f"{rev}-{variant}.so"
        subprocess.run(["gcc", "-O3", "-fno-wrapv", "-pthread", *fused.BUILD_FLAGS[variant], "-shared", "-fPIC",
                        str(src / "fused_dymn.c"), "-o", str(so), "-lm"], check=True)
        libs[f"{rev}:{variant}"] = so
    return libs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundles", nargs="*", type=Path)
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--against", metavar="REV", help="also time runtime/csrc/ of this git commit")
    args = ap.parse_args()
    bundles = args.bundles or [embedded_bundle_path("dymn04_edge"), embedded_bundle_path("mn04_as")]
    installed = _installed()
    if not installed:
        sys.exit("no fused library is installed (pip install . compiles it; it needs gcc)")
    window = log_mel(load_audio(demo_clip_path()))[None, None].astype(np.float32)  # the demo clip's 10 s window
    with tempfile.TemporaryDirectory() as tmp:
        libraries = dict(installed)
        if args.against:
            libraries.update(_compile_rev(args.against, [v for v in installed if v != "generic"], Path(tmp)))
        print(f"{len(libraries)} builds, {args.threads} thread(s), {args.rounds} interleaved rounds of 5 windows")
        for bundle in bundles:
            if not (Path(bundle) / fused.FUSED_FILE).is_file():
                sys.exit(f"{bundle}: no {fused.FUSED_FILE} (a bundle folder from dymn-edge export onnx, without --no-fused)")
            weights = fused._Weights(Path(bundle) / fused.FUSED_FILE)
            plans = {name: [fused._Plan(fused.load_library(path), weights, window.shape[2], window.shape[3], args.threads)
                            for _ in range(2)] for name, path in libraries.items()}
            logits = {name: pair[0].run(window[0, 0]) for name, pair in plans.items()}
            turn = {name: 0 for name in plans}

            def runner(name):
                def run(x):
                    turn[name] ^= 1
                    plans[name][turn[name]].run(x)
                return run

            ms = interleaved_medians({name: runner(name) for name in plans}, window[0, 0], rounds=args.rounds, runs_per_round=5)
            first = next(iter(plans))
            print(f"\n{Path(bundle).name}")
            for name in plans:
                diff = float(np.abs(logits[name] - logits[first]).max())
                print(f"  {name:24s} {ms[name]:8.3f} ms   {ms[first] / ms[name]:5.2f}x of {first}   max |logit diff| {diff:.2e}")
            if "avx2" in logits and "avx512" in logits and not np.array_equal(logits["avx2"], logits["avx512"]):
                sys.exit(f"{bundle}: the AVX2 and AVX-512 builds disagree; they must give bit-identical logits")


if __name__ == "__main__":
    main()
