"""Streaming benchmark for `dymn-edge listen` with the embedded default model (mn04_as), hop 1 s.

Live: raw PCM (48 kHz, s16le) written to the listener's stdin at real time, as arecord would,
for ``--seconds`` of a real recording; with ``--vmic`` also through the real PortAudio path (a
PulseAudio virtual microphone, shared/RECIPES.md). File: a long recording as fast as possible.

Reported: CPU (percent of one core, from the listener's own process time over its run, so model
loading is excluded), window-complete-to-output latency (median, p90), peak RSS (VmHWM of the
whole process, at exit), start-up to first result (process start to the first scores line on
disk), and the file-mode real-time factor. Writes benchmarks/results/streaming.json.

    python benchmarks/streaming.py [--seconds 60] [--vmic] [--shared ../shared]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from cli_child import child_report, spawn_cli  # benchmarks/cli_child.py
from dymn_edge.runtime.audio import load_audio
from dymn_edge.runtime.machine import machine_info

REPO = Path(__file__).resolve().parents[1]

def _spawn(args: list[str], env=None, stdin=None) -> subprocess.Popen:
    return spawn_cli(args, stdin=stdin, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=False, env=env)


def _first_line_time(path: Path, started: float, stop: threading.Event, out: dict) -> None:
    while not stop.is_set():
        if path.exists() and path.stat().st_size > 0:
            out["first_result_s"] = time.perf_counter() - started
            return
        time.sleep(0.005)


def _finish(proc: subprocess.Popen, started: float) -> dict:
    _, err = proc.communicate(timeout=120)
    text = err.decode()
    if proc.returncode != 0:
        raise SystemExit(f"listen failed: {text}")
    report = child_report(text)
    summary_line = next(line for line in text.splitlines() if line.startswith("listened to"))
    return {**report, "summary_line": summary_line, "process_wall_s": time.perf_counter() - started}


def _summary_from(jsonl: Path) -> list[dict]:
    return [json.loads(line) for line in jsonl.read_text().splitlines()]


def live_stdin(audio: np.ndarray, seconds: float, tmp: Path) -> dict:
    pcm = (np.clip(audio[: int(seconds * 48000)], -1, 1) * 32767).astype("<i2")
    out = tmp / "live.jsonl"
    args = ["listen", "--input", "-", "--input-rate", "48000", "--hop", "1", "--jsonl", str(out), "--no-view"]
    started = time.perf_counter()
    proc = _spawn(args, stdin=subprocess.PIPE)
    stop, first = threading.Event(), {}
    watcher = threading.Thread(target=_first_line_time, args=(out, started, stop, first), daemon=True)
    watcher.start()
    chunk = 4800  # 100 ms blocks, as a sound card driver delivers them
    t0 = time.perf_counter()
    for i in range(0, len(pcm), chunk):
        wait = t0 + i / 48000 - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        proc.stdin.write(pcm[i : i + chunk].tobytes())
        proc.stdin.flush()
    proc.stdin.close()
    proc.stdin = None  # closed: the end of the stream
    result = _finish(proc, started)
    stop.set()
    return {**result, **first, "lines": len(_summary_from(out))}


def live_vmic(clip: Path, seconds: float, tmp: Path) -> dict:
    sys.path.insert(0, str(REPO / "tests" / "runtime" / "stream"))
    from peers import VirtualMic  # the same virtual microphone the tests use

    rundir = tempfile.mkdtemp(prefix="vmic-")
    mic = VirtualMic(rundir)
    mic.start()
    try:
        out = tmp / "vmic.jsonl"
        env = {**os.environ, **mic.env}
        started = time.perf_counter()
        proc = _spawn(["listen", "--device", "vmic", "--hop", "1", "--jsonl", str(out), "--no-view",
                       "--max-seconds", str(seconds)], env=env)
        stop, first = threading.Event(), {}
        threading.Thread(target=_first_line_time, args=(out, started, stop, first), daemon=True).start()
        player = mic.play(clip, wait=False)
        result = _finish(proc, started)
        player.terminate()
        stop.set()
        return {**result, **first}
    finally:
        mic.stop()


def file_mode(path: Path, tmp: Path) -> dict:
    started = time.perf_counter()
    proc = _spawn(["listen", "--input", str(path), "--hop", "1", "--threads", "2", "--jsonl", str(tmp / "file.jsonl"), "--no-view"])
    return _finish(proc, started)


def _parse(line: str) -> dict:
    # "listened to 60.0 s in 60.1 s: 60 windows, ... latency median 3 ms, CPU 2%, ..."
    import re

    stream, wall = map(float, re.search(r"listened to ([\d.]+) s in ([\d.]+) s", line).groups())
    return {"stream_s": stream, "wall_s": wall, "rtf": stream / wall, "latency_ms": float(re.search(r"latency median (\d+) ms", line).group(1)),
            "cpu_percent": float(re.search(r"CPU (\d+)%", line).group(1)), "dropped": int(re.search(r"(\d+) dropped", line).group(1)),
            "cpu_percent_steady": float(m.group(1)) if (m := re.search(r"steady ([\d.]+)%", line)) else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("DYMN_EDGE_SHARED", REPO.parent / "shared")))
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--vmic", action="store_true", help="also measure through a PulseAudio virtual microphone")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "streaming.json")
    args = parser.parse_args()
    whale = args.shared / "data" / "streaming" / "glacier_bay_humpback_whale.flac"
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        audio = load_audio(whale, 48000)
        results["live_stdin"] = live_stdin(audio, args.seconds, tmp)
        if args.vmic:
            clip = tmp / "whale.wav"
            sf.write(clip, audio, 48000)
            results["live_vmic"] = live_vmic(clip, args.seconds, tmp)
        parts = [load_audio(args.shared / "data" / "streaming" / f, 44100) for f in
                 ("glacier_bay_humpback_whale.flac", "kevin_macleod_vibe_ace.flac", "brahms_hungarian_dance_5_us_army_strings.flac")]
        long_file = tmp / "long.flac"
        sf.write(long_file, np.concatenate(parts * 3), 44100)
        results["file"] = file_mode(long_file, tmp)
    for name, r in results.items():
        r.update(_parse(r["summary_line"]))
        print(f"{name:11s} stream {r['stream_s']:6.1f} s  wall {r['wall_s']:6.1f} s  RTF {r['rtf']:7.1f}  CPU {r['cpu_percent']:4.0f}% (steady {r['cpu_percent_steady']})  "
              f"latency median {r['latency_ms']:3.0f} ms  peak RSS {r['peak_rss_mb']:5.1f} MB  first result "
              f"{r.get('first_result_s', float('nan')):.2f} s  dropped {r['dropped']}  torch {r['torch_loaded']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine_info(), "seconds": args.seconds, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
