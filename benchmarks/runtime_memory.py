"""Peak memory of a runtime process tagging a file: `dymn-edge tag` on a bundle, measured as VmHWM.

The export issue's target: an ONNX Runtime process (no torch) tagging a file with dymn10 peaks
below 150 MB RSS. Each bundle is tagged in a fresh process that reports, at exit, its own peak
resident memory (VmHWM, which covers anonymous and file-backed pages) and whether torch was ever
imported. The parent only spawns processes, so nothing of its own memory is counted.

    python benchmarks/runtime_memory.py BUNDLE... [--audio FILE] [--backend onnxruntime] [--window SECONDS]
        [--repeat 3] [--json benchmarks/results/runtime_memory.json]

--window tags on windows of that length (`dymn-edge tag --window`), as files over 60 s always are.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from cli_child import child_report, spawn_cli  # benchmarks/cli_child.py
from dymn_edge.runtime.machine import machine_info
from dymn_edge.runtime.registry import demo_clip_path


def measure(bundle: str, audio: str, backend: str, window_s: float | None = None) -> dict:
    args = ["tag", audio, "--model", bundle, "--backend", backend, "--json", *(["--window", window_s] if window_s else [])]
    proc = spawn_cli(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"dymn-edge tag failed on {bundle}: {err.strip()}")
    report = child_report(err)
    tags = json.loads(out.splitlines()[0])["tags"]
    return {**report, "top_tag": tags[0]["label"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+")
    parser.add_argument("--audio", default=str(demo_clip_path()))
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--window", type=float, default=None, help="tag on windows of this many seconds")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for bundle in args.bundles:
        runs = [measure(bundle, args.audio, args.backend, args.window) for _ in range(args.repeat)]
        peaks = [r["peak_rss_mb"] for r in runs]
        row = {"bundle": bundle, "backend": args.backend, "audio": args.audio, "window_s": args.window, "peak_rss_mb_min": min(peaks),
               "peak_rss_mb_max": max(peaks), "torch_loaded": any(r["torch_loaded"] for r in runs), "top_tag": runs[0]["top_tag"]}
        rows.append(row)
        print(f"{bundle}: peak RSS {min(peaks):.1f}-{max(peaks):.1f} MB over {len(runs)} runs, torch loaded: {row['torch_loaded']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine_info(), "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
