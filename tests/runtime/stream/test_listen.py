"""`dymn-edge listen` on files and stdin: JSONL, events on real audio, shutdown, overload, bad input."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from dymn_edge.runtime import embedded_bundle_path, load_bundle
from dymn_edge.runtime.registry import demo_clip_path
from dymn_edge.runtime.audio import load_audio
from dymn_edge.runtime.backends import create_backend
from dymn_edge.runtime.stream.listener import Listener, ListenOptions
from dymn_edge.runtime.stream.sources import FileSource

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _listen(*args, stdin=None, timeout=300, cwd=None):
    return subprocess.run([sys.executable, "-m", "dymn_edge", "listen", *map(str, args)], input=stdin,
                          capture_output=True, timeout=timeout, cwd=cwd, env=ENV)


def _lines(path):
    return [json.loads(line) for line in open(path)]


def _final_events(lines):
    events = {}
    for line in lines:
        if line["type"] == "event":
            events[line["id"]] = line
    return list(events.values())


@pytest.fixture(scope="module")
def mixture(shared):
    folder = shared / "data" / "mixture"
    truth = list(csv.DictReader(open(folder / "esc50_mixture_40s_events.csv")))
    labels = sorted({name for row in truth for name in row["audioset_labels"].split(";")})
    return folder / "esc50_mixture_40s.flac", truth, labels


def test_events_on_the_mixture_with_default_settings(mixture, tmp_path):
    """At least 5 of the 6 true events, with an accepted label, overlapping and starting within 2 s; at most one spurious."""
    audio, truth, labels = mixture
    label_args = [a for name in labels for a in ("--labels", name)]
    proc = _listen("--input", audio, *label_args, "--jsonl", tmp_path / "out.jsonl", "--record-events", tmp_path / "wav", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = _lines(tmp_path / "out.jsonl")
    events = _final_events(lines)
    spans = [(row["audioset_labels"].split(";"), float(row["active_onset_s"]), float(row["active_offset_s"])) for row in truth]
    found = sum(any(e["label"] in accepted and e["onset"] < off and e["offset"] > on and abs(e["onset"] - on) <= 2.0 for e in events)
                for accepted, on, off in spans)
    spurious = [e for e in events if not any(e["label"] in accepted and e["onset"] < off and e["offset"] > on for accepted, on, off in spans)]
    assert found >= 5 and len(spurious) <= 1, (found, spurious)
    # Stream time is file time: windows end every hop (0.5 s) and the last one at the file's end.
    scores = [line for line in lines if line["type"] == "scores"]
    assert scores[0]["start"] == 0.0 and scores[0]["end"] == 0.5 and scores[-1]["end"] == 40.0
    assert all(b["end"] - a["end"] == pytest.approx(0.5) for a, b in zip(scores, scores[1:]))
    assert all(s["end"] - s["start"] <= 2.0 + 1e-9 for s in scores)
    # Each event appears twice with the same id: open (offset null) and closed.
    by_id = {}
    for line in lines:
        if line["type"] == "event":
            by_id.setdefault(line["id"], []).append(line["offset"])
    assert all(offsets[0] is None and offsets[-1] is not None and len(offsets) == 2 for offsets in by_id.values())
    assert set(lines[-1]) >= {"type"} and all(set(e) == {"type", "id", "label", "index", "onset", "offset", "score"} for e in events)
    tags = scores[10]["tags"]
    assert len(tags) == 5 and all(t["label"] in labels for t in tags) and tags == sorted(tags, key=lambda t: -t["score"])
    # One WAV snippet per event, as long as the event plus 0.5 s of context on each side (clipped at the ends).
    wavs = sorted((tmp_path / "wav").glob("*.wav"))
    assert len(wavs) == len(events)
    for e in events:
        [wav] = [w for w in wavs if w.name.startswith(f"event_{e['id']:04d}_")]
        expected = min(e["offset"] + 0.5, 40.0) - max(e["onset"] - 0.5, 0.0)
        assert sf.info(str(wav)).duration == pytest.approx(expected, abs=0.01)
    assert "listened to 40.0 s" in proc.stderr.decode()


def test_raw_pcm_on_stdin_gives_the_same_events_as_the_file(mixture, tmp_path):
    audio, _, labels = mixture
    wave, rate = sf.read(str(audio), dtype="int16")
    label_args = [a for name in labels for a in ("--labels", name)]
    proc = _listen("--input", "-", "--input-rate", rate, "--input-format", "s16le", *label_args, "--jsonl", tmp_path / "pcm.jsonl",
                   stdin=wave.tobytes(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    proc = _listen("--input", audio, *label_args, "--jsonl", tmp_path / "file.jsonl", cwd=tmp_path)
    assert proc.returncode == 0
    from_pcm, from_file = _final_events(_lines(tmp_path / "pcm.jsonl")), _final_events(_lines(tmp_path / "file.jsonl"))
    assert [(e["label"], e["onset"], e["offset"]) for e in from_pcm] == [(e["label"], e["onset"], e["offset"]) for e in from_file]


def test_sigterm_flushes_and_closes_open_events(tmp_path):
    """A live stdin stream stopped by SIGTERM: exit 0, every line complete, open events closed at the stream's end."""
    wave = (load_audio(demo_clip_path()) * 32767).astype(np.int16)
    out = tmp_path / "live.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "dymn_edge", "listen", "--input", "-", "--input-rate", "32000", "--jsonl", out,
                             "--labels", "Whale vocalization", "--window", "2", "--hop", "0.5"],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, cwd=tmp_path)
    for i in range(0, 6 * 32000, 3200):  # 6 s of whale song at about real time
        proc.stdin.write(wave[i : i + 3200].tobytes())
        proc.stdin.flush()
        time.sleep(0.05)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (out.exists() and '"type": "event"' in out.read_text()):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    lines = _lines(out)  # every line parses: nothing half-written
    events = _final_events(lines)
    assert events and events[0]["label"] == "Whale vocalization" and all(e["offset"] is not None for e in events)
    # An event still on at shutdown is closed at the end of the stream (the end of the last window).
    last_scores = max(i for i, line in enumerate(lines) if line["type"] == "scores")
    for line in lines[last_scores + 1 :]:
        assert line["type"] == "event" and line["offset"] == lines[last_scores]["end"]
    assert "listened to" in err.decode()


class _SlowBackend:
    """The real model, made artificially slow: what a device too weak for the model looks like."""

    def __init__(self, backend, delay_s):
        self.backend, self.delay_s, self.max_batch = backend, delay_s, backend.max_batch

    def infer(self, x):
        time.sleep(self.delay_s)
        return self.backend.infer(x)


class _PacedSource:
    """A file delivered at real time, like a microphone."""

    realtime = True

    def __init__(self, path, block_s=0.05):
        self.inner = FileSource(path, block_s=block_s)
        self.sample_rate, self.channels, self.block_s = self.inner.sample_rate, self.inner.channels, block_s

    def blocks(self, stop):
        t0 = time.perf_counter()
        for index, block in self.inner.blocks(stop):
            wait = t0 + (index + block.shape[0]) / self.sample_rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            yield index, block


class _Record:
    def __init__(self):
        self.results = []

    def scores(self, result, tags):
        self.results.append(result)

    def event(self, event):
        pass

    def close(self):
        pass


def test_overload_drops_oldest_windows_and_keeps_latency_bounded(mixture):
    """Inference at 0.3 s per window against a 0.1 s hop: windows are dropped and counted, latency stays bounded."""
    audio, _, _ = mixture
    bundle = load_bundle(embedded_bundle_path())
    backend = _SlowBackend(create_backend("onnxruntime", bundle, threads=1), 0.3)
    sink = _Record()
    stop = threading.Event()
    threading.Timer(6.0, stop.set).start()
    listener = Listener(backend, bundle.labels, _PacedSource(audio), ListenOptions(window_s=1.0, hop_s=0.1, queue_size=3), [sink])
    summary = listener.run(stop)
    assert summary["dropped_windows"] > 20  # ~10 windows/s arrive, ~3/s are scored
    assert summary["windows"] + summary["dropped_windows"] == pytest.approx(summary["stream_s"] / 0.1, abs=2)
    latencies = [r.latency_ms for r in sink.results]
    # Bound: the queue (3) plus the window in progress, at 0.3 s each, plus slack for a busy machine.
    assert max(latencies) < (3 + 1) * 300 + 500, max(latencies)
    assert np.median(latencies[len(latencies) // 2 :]) < 1600  # no growth over time
    ends = [r.window.end_s for r in sink.results]
    assert ends == sorted(ends)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--input", "-"], "--input - reads raw PCM, so it needs --input-rate"),
        (["--input", "no_such.wav"], "no_such.wav: no such audio file"),
        (["--input", "DEMO", "--labels", "Dogz"], "unknown label 'Dogz'; did you mean"),
        (["--input", "DEMO", "--mqtt", "http://x/y"], "expected mqtt://HOST[:PORT]/TOPIC"),
        (["--input", "DEMO", "--device", "vmic"], "--device selects a microphone; it cannot be combined with --input"),
        (["--input", "DEMO", "--jsonl", "/no/such/dir/x.jsonl"], "cannot open for writing JSONL"),
    ],
)
def test_bad_input_is_a_one_line_error(args, message, tmp_path):
    demo = str(demo_clip_path())
    proc = _listen(*[demo if a == "DEMO" else a for a in args], cwd=tmp_path, stdin=b"")
    err = proc.stderr.decode()
    assert proc.returncode == 1 and message in err and "Traceback" not in err, err


def test_bad_options_exit_2(tmp_path):
    for args, message in [(["--window", "0"], "positive number of seconds"), (["--threshold", "1.5"], "1.5 is not in the range"),
                          (["--smoothing", "mean"], "'mean' is not one of"), (["--input-format", "s12"], "'s12' is not one of")]:
        proc = _listen(*args, cwd=tmp_path)
        assert proc.returncode == 2 and message in proc.stderr.decode(), proc.stderr.decode()


class _Shapes:
    """Records the input shape of every run of the wrapped backend."""

    def __init__(self, backend):
        self.backend, self.max_batch, self.shapes = backend, backend.max_batch, []

    def infer(self, x):
        self.shapes.append(x.shape)
        return self.backend.infer(x)


def test_a_live_stream_warms_the_backend_up_before_audio_flows(mixture):
    """OpenVINO compiles on first use: the full window for its exact shape, shorter windows once
    more. The listener runs both before the source starts (the first two runs), so the live stream
    then scores every window (two-slot queue, 0.1 s hop)."""
    pytest.importorskip("openvino", reason='OpenVINO not installed (pip install "dymn-edge[openvino]")')
    audio, _, _ = mixture
    from dymn_edge.runtime.backends.openvino import OpenVinoBackend

    bundle = load_bundle(embedded_bundle_path())
    backend = _Shapes(OpenVinoBackend(bundle.require("onnx"), threads=1, static_frames=200))  # a 2 s window
    sink = _Record()
    stop = threading.Event()
    threading.Timer(3.0, stop.set).start()
    options = ListenOptions(window_s=2.0, hop_s=0.1, queue_size=2)
    listener = Listener(backend, bundle.labels, _PacedSource(audio), options, [sink], frontend=bundle.frontend)
    summary = listener.run(stop)
    assert backend.shapes[:2] == [(1, 1, 128, 200), (1, 1, 128, 10)]  # before the first window
    # The 3 s timer also covers the warm-up, so count against the seconds the stream really ran.
    assert summary["dropped_windows"] == 0 and summary["windows"] >= 15
    assert summary["windows"] == pytest.approx(summary["stream_s"] / 0.1, abs=2), summary
    assert len(sink.results) == summary["windows"]
    assert list(backend.backend._static) == [(1, 1, 128, 200)] and backend.backend._as_written is not None
