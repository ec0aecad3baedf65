"""Each streaming stage against a reference computation: ring, resampler, windows, incremental
frontend, queue, smoothing, thresholds, hysteresis, raw PCM decoding."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile as sf
import soxr

from dymn_edge.runtime.audio import load_audio
from dymn_edge.runtime.errors import DymnEdgeError
from dymn_edge.runtime.frontend import log_mel
from dymn_edge.runtime.labels import audioset_labels
from dymn_edge.runtime.registry import demo_clip_path
from dymn_edge.runtime.stream.events import EventDetector
from dymn_edge.runtime.stream.incremental import IncrementalLogMel
from dymn_edge.runtime.stream.postprocess import Smoother, load_thresholds, resolve_labels
from dymn_edge.runtime.stream.resampler import StreamResampler
from dymn_edge.runtime.stream.ring import FrameRing
from dymn_edge.runtime.stream.sources import RawPcmSource
from dymn_edge.runtime.stream.windows import Window, Windower
from dymn_edge.runtime.stream.worker import DropOldestQueue


def test_ring_keeps_order_and_counts_what_overflow_drops():
    ring = FrameRing(10, 2)
    ring.write(np.arange(12, dtype=np.float32).reshape(6, 2))
    start, block = ring.read(timeout=0)
    assert start == 0 and block[:, 0].tolist() == [0, 2, 4, 6, 8, 10]
    for i in range(3):  # 12 frames into a ring of 10 while nobody reads
        ring.write(np.full((4, 2), i, dtype=np.float32))
    start, block = ring.read(timeout=0)
    assert ring.dropped_frames == 2 and start == 8 and block.shape == (10, 2)  # frames 6 and 7 were lost
    assert block[:, 1].tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    ring.write(np.ones((25, 2), dtype=np.float32))  # a block larger than the ring keeps its newest part
    start, block = ring.read(timeout=0)
    assert start == 33 and block.shape == (10, 2) and ring.dropped_frames == 2 + 15
    assert ring.read(timeout=0.01)[1].shape == (0, 2)


@pytest.mark.parametrize("rate", [44100, 48000, 16000, 22050])
def test_streaming_resampler_equals_resampling_at_once(rate):
    rng = np.random.default_rng(0)
    signal = (0.3 * rng.standard_normal((rate * 3, 2))).astype(np.float32)
    whole = soxr.resample(signal.mean(axis=1), rate, 32000, quality="HQ")
    stream = StreamResampler(rate)
    sizes = rng.integers(1, 4000, size=200)
    pieces, pos = [], 0
    for n in sizes:
        pieces.append(stream.process(signal[pos : pos + n]))
        pos += n
    pieces.append(stream.process(signal[pos:]))
    pieces.append(stream.flush())
    got = np.concatenate(pieces)
    assert got.shape == whole.shape
    assert np.abs(got - whole).max() < 1e-6


def test_no_clicks_at_block_edges():
    """A 1 kHz tone resampled 44.1 -> 32 kHz in 10 ms blocks stays a pure tone (residual < -80 dB)."""
    rate, f = 44100, 1000.0
    tone = (0.5 * np.sin(2 * np.pi * f * np.arange(rate * 2) / rate)).astype(np.float32)
    stream = StreamResampler(rate)
    out = np.concatenate([stream.process(tone[i : i + 441]) for i in range(0, len(tone), 441)])
    t = np.arange(len(out)) / 32000
    core = slice(3200, len(out) - 3200)  # away from the stream's own start and end
    basis = np.stack([np.sin(2 * np.pi * f * t), np.cos(2 * np.pi * f * t)], axis=1)[core]
    coef, *_ = np.linalg.lstsq(basis, out[core], rcond=None)
    residual = out[core] - basis @ coef
    assert np.hypot(*coef) == pytest.approx(0.5, rel=1e-3)
    assert 20 * np.log10(np.abs(residual).max() / 0.5) < -80


def test_windows_grow_then_slide_and_finish_covers_the_tail():
    w = Windower(window_s=2.0, hop_s=0.5, sample_rate=1000)
    got = w.push(1200) + w.push(1100)
    assert [(x.start, x.end) for x in got] == [(0, 500), (0, 1000), (0, 1500), (0, 2000)]
    got = w.push(700)
    assert [(x.start, x.end) for x in got] == [(500, 2500), (1000, 3000)]
    assert [(x.start, x.end) for x in w.finish()] == []  # the stream ended on a window boundary
    w.push(300)
    assert [(x.start, x.end, x.index) for x in w.finish()] == [(1300, 3300, 6)]


@pytest.mark.parametrize("window_s, hop_s, block", [(10, 1, 3200), (2, 0.5, 777), (3, 0.25, 32000 * 4), (1, 0.333, 5000), (2, 0.5, 100)])
def test_incremental_frontend_equals_a_full_recompute(window_s, hop_s, block):
    audio = load_audio(demo_clip_path())
    windower = Windower(window_s, hop_s)
    frontend = IncrementalLogMel(windower.window)
    checked = 0
    for i in range(0, len(audio), block):
        chunk = audio[i : i + block]
        frontend.push(chunk)
        for w in windower.push(len(chunk)):
            np.testing.assert_allclose(frontend.features(w.start, w.end), log_mel(audio[w.start : w.end]), atol=1e-5, rtol=0)
            checked += 1
    for w in windower.finish():
        np.testing.assert_allclose(frontend.features(w.start, w.end), log_mel(audio[w.start : w.end]), atol=1e-5, rtol=0)
        checked += 1
    assert checked >= 10
    aligned = round(hop_s * 32000) % 320 == 0
    assert (frontend.full_recomputes == 0) == aligned  # unaligned hops fall back to a full recompute
    assert frontend._x.shape[0] <= windower.window + block + 2048  # memory stays bounded by the window


def test_drop_oldest_queue():
    q = DropOldestQueue(2)
    for i in range(5):
        q.put(i)
    assert q.dropped == 3 and [q.get(0), q.get(0)] == [3, 4] and q.get(0.01) is None
    q.close()
    assert q.get() is None


def test_smoothing():
    ema, med = Smoother("ema", alpha=0.5), Smoother("median", size=3)
    xs = [np.array([0.0]), np.array([1.0]), np.array([0.0]), np.array([1.0])]
    assert [float(ema(x)[0]) for x in xs] == [0.0, 0.5, 0.25, 0.625]
    assert [float(med(x)[0]) for x in xs] == [0.0, 0.5, 0.0, 1.0]
    with pytest.raises(DymnEdgeError, match="unknown smoothing 'mean'"):
        Smoother("mean")


def _detector(**kw):
    labels = audioset_labels()
    return EventDetector([74], labels, np.full(len(labels), 0.5, np.float32), hop_s=1.0, **kw)


def _feed(detector, series, window_s=2.0):
    out = []
    for i, s in enumerate(series):
        end = i + 1
        scores = np.zeros(527, np.float32)
        scores[74] = s
        out += [(e.id, e.onset, e.offset) for e in detector.update(Window(i, max(0, (end - int(window_s)) * 32000), end * 32000), scores)]
    return out


def test_hysteresis_opens_holds_and_closes():
    # on at 0.5, off below 0.25: the dip to 0.3 does not end the event, 0.1 does.
    events = _feed(_detector(), [0.1, 0.6, 0.3, 0.7, 0.1, 0.1])
    assert events == [(1, 1.0, None), (1, 1.0, 3.0)]  # onset: newest hop of the rising window; offset: falling window's start


def test_minimum_duration_suppresses_blips_and_finish_closes_open_events():
    d = _detector(min_duration_s=2.0)
    assert _feed(d, [0.9, 0.1, 0.9, 0.9, 0.9]) == [(1, 2.0, None)]  # a one-window blip never opens
    assert [(e.id, e.onset, e.offset) for e in d.finish(5.0)] == [(1, 2.0, 5.0)]


def test_resolve_labels_and_thresholds_files(tmp_path):
    labels = audioset_labels()
    # exact name, case-insensitive name, mid (a duplicate of Dog: kept once), a name with commas
    assert resolve_labels(["Dog", "bark", "/m/0bt9lr", "Fire engine, fire truck (siren)"], labels) == [74, 75, 325]
    with pytest.raises(DymnEdgeError, match=r"unknown label 'Sirens'; did you mean 'Siren'"):
        resolve_labels(["Sirens"], labels)
    csv_file = tmp_path / "t.csv"
    csv_file.write_text('label,threshold\nDog,0.6\n"Fire engine, fire truck (siren)",0.2\n')
    t = load_thresholds(csv_file, labels, 0.3)
    assert t[74] == pytest.approx(0.6) and t[325] == pytest.approx(0.2) and t[0] == pytest.approx(0.3)
    json_file = tmp_path / "t.json"
    json_file.write_text(json.dumps({"Siren": 0.45}))
    assert load_thresholds(json_file, labels, 0.3)[396] == pytest.approx(0.45)
    for content, message in [("Dog,1.5\n", "expected a number in \\(0, 1\\)"), ("Dog,high\n", "expected a number"),
                             ("Dog\n", "expected rows of 'label,threshold'"), ("Wolfhound,0.5\n", "unknown label 'Wolfhound'")]:
        csv_file.write_text(content)
        with pytest.raises(DymnEdgeError, match=message):
            load_thresholds(csv_file, labels, 0.3)
    with pytest.raises(DymnEdgeError, match="cannot read thresholds file"):
        load_thresholds(tmp_path / "missing.csv", labels, 0.3)


@pytest.mark.parametrize("fmt, subtype, tolerance", [("s16le", "PCM_16", 0), ("s24le", "PCM_24", 0), ("s32le", "PCM_32", 0),
                                                     ("f32le", "FLOAT", 0), ("f64le", "DOUBLE", 0), ("u8", "PCM_U8", 0)])
def test_raw_pcm_formats_decode_like_soundfile(fmt, subtype, tolerance):
    rng = np.random.default_rng(1)
    data = np.clip(0.4 * rng.standard_normal((4000, 2)), -1, 1)
    raw = io.BytesIO()
    sf.write(raw, data, 16000, format="RAW", subtype=subtype, endian="LITTLE")
    expected, _ = sf.read(io.BytesIO(raw.getvalue()), samplerate=16000, channels=2, format="RAW", subtype=subtype,
                          endian="LITTLE", dtype="float32")
    source = RawPcmSource(io.BufferedReader(io.BytesIO(raw.getvalue())), 16000, fmt, channels=2, block_s=0.013)
    import threading

    blocks = list(source.blocks(threading.Event()))
    got = np.concatenate([b for _, b in blocks])
    assert [i for i, _ in blocks] == list(np.cumsum([0] + [b.shape[0] for _, b in blocks[:-1]]))
    np.testing.assert_allclose(got, expected, atol=max(tolerance, 1e-7))


def test_raw_pcm_bad_input():
    with pytest.raises(DymnEdgeError, match="unknown PCM format 's12'"):
        RawPcmSource(io.BytesIO(), 16000, "s12")
    with pytest.raises(DymnEdgeError, match="positive --input-rate"):
        RawPcmSource(io.BytesIO(), 0, "s16le")
