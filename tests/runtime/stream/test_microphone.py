"""End to end through the real PortAudio path: a virtual microphone fed a real recording.

PulseAudio null sink -> ALSA pulse plugin -> PortAudio -> sounddevice -> `dymn-edge listen --device vmic`
(shared/RECIPES.md). PortAudio needs about 2 s to deliver the first block of a new stream.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import soundfile as sf

from peers import wait_until as _wait

pytestmark = pytest.mark.slow


def _start(virtual_mic, out, *args):
    env = {**os.environ, **virtual_mic.env, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "dymn_edge", "-v", "listen", "--device", "vmic", "--jsonl", str(out), *args],
                            env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)


def _lines(path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _whale_clip(shared, tmp_path, seconds=8.0):
    audio, rate = sf.read(str(shared / "data/streaming/glacier_bay_humpback_whale.flac"), dtype="float32")
    clip = tmp_path / "whale.wav"
    sf.write(clip, audio[int(28 * rate) : int((28 + seconds) * rate)], rate)
    return clip


def _whale_in_top(lines, after_s=0.0):
    return any(line["type"] == "scores" and line["end"] > after_s and line["tags"][0]["label"] == "Whale vocalization" for line in lines)


def test_microphone_to_labels(virtual_mic, shared, tmp_path):
    clip = _whale_clip(shared, tmp_path)
    out = tmp_path / "mic.jsonl"
    proc = _start(virtual_mic, out, "--labels", "Whale vocalization", "--labels", "Speech", "--labels", "Music")
    try:
        assert _wait(lambda: _lines(out), 20), "no audio from the virtual microphone within 20 s"
        started = time.monotonic()
        virtual_mic.play(clip, wait=False)
        assert _wait(lambda: _whale_in_top(_lines(out)), 20), _lines(out)[-3:]
        assert time.monotonic() - started < 12  # labels appear while the 8 s clip is still playing, or just after
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    lines = _lines(out)
    ends = [line["end"] for line in lines if line["type"] == "scores"]
    assert ends == sorted(ends) and ends[0] == pytest.approx(0.5)  # stream time from the first sample, every hop
    whale = max(t["score"] for line in lines if line["type"] == "scores" for t in line["tags"] if t["label"] == "Whale vocalization")
    events = [line for line in lines if line["type"] == "event" and line["label"] == "Whale vocalization"]
    assert whale < 0.3 or (events and events[-1]["offset"] is not None), whale


def test_device_that_disappears_is_reopened(virtual_mic, shared, tmp_path):
    clip = _whale_clip(shared, tmp_path, seconds=6.0)
    out = tmp_path / "mic.jsonl"
    proc = _start(virtual_mic, out, "--labels", "Whale vocalization")
    try:
        assert _wait(lambda: _lines(out), 20)
        virtual_mic.kill()  # the device vanishes mid-stream
        time.sleep(1.5)
        virtual_mic.start()
        mark = max(line["end"] for line in _lines(out) if line["type"] == "scores")
        assert _wait(lambda: any(line["type"] == "scores" and line["end"] > mark + 2 for line in _lines(out)), 30), "stream was not reopened"
        virtual_mic.play(clip, wait=False)
        assert _wait(lambda: _whale_in_top(_lines(out), after_s=mark), 25)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopped delivering audio; reopening it" in err and "restarts 1" in err
    ends = [line["end"] for line in _lines(out) if line["type"] == "scores"]
    assert ends == sorted(ends)  # the outage is a gap in stream time, not a jump backwards


def test_unknown_device_lists_the_devices(virtual_mic, tmp_path):
    env = {**os.environ, **virtual_mic.env}
    proc = subprocess.run([sys.executable, "-m", "dymn_edge", "listen", "--device", "nosuchmic"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1 and "no input device named 'nosuchmic'; input devices:" in proc.stderr and "vmic" in proc.stderr
    listing = subprocess.run([sys.executable, "-m", "dymn_edge", "listen", "--list-devices"], env=env, capture_output=True,
                             text=True, timeout=60)
    assert listing.returncode == 0 and "vmic" in listing.stdout


def test_no_input_device_is_a_clear_error(tmp_path):
    pytest.importorskip("sounddevice", reason="sounddevice is not installed")
    env = {k: v for k, v in os.environ.items() if k not in ("PULSE_SERVER", "ALSA_CONFIG_PATH")}
    env["PULSE_SERVER"] = "unix:/nonexistent/pulse"  # no server, and these machines have no sound card
    proc = subprocess.run([sys.executable, "-m", "dymn_edge", "listen"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "no audio input device found" in proc.stderr, proc.stderr
