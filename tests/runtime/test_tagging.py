"""Tagging logic: windows, aggregation, ranking, JSON shape (with a deterministic stand-in backend)."""

import json

import numpy as np
import pytest
import soundfile as sf

from dymn_edge.runtime import tagging
from dymn_edge.runtime.audio import load_audio
from dymn_edge.runtime.errors import AudioFormatError
from dymn_edge.runtime.frontend import LogMel
from dymn_edge.runtime.labels import LabelSet
from dymn_edge.runtime.tagging import MAX_SINGLE_PASS_S, Tagger, file_blocks, sigmoid, stream_windows, top_tags, window_bounds


class LoudnessBackend:
    """Logit of class c = mean log-mel energy * (c + 1): louder windows score higher, deterministically."""

    name, max_batch = "fake", None

    def __init__(self, classes=4):
        self.classes = classes
        self.calls = []

    def infer(self, features):
        self.calls.append(features.shape)
        energy = features.mean(axis=(1, 2, 3))
        return np.stack([energy * (c + 1) for c in range(self.classes)], axis=1).astype(np.float32)


@pytest.fixture
def tagger():
    return Tagger(LogMel(), LoudnessBackend(), LabelSet.placeholder(4), model_name="fake")


def test_window_bounds_follow_efficientat_where_it_defines_windows(fixtures_dir):
    cases = json.loads((fixtures_dir / "windowed_inference_cases.json").read_text())["cases"]
    checked = 0
    for case in cases:
        sr = 32000
        window, hop, length = int(case["window_s"] * sr), int(case["hop_s"] * sr), case["length_samples"]
        ours = window_bounds(length, window, hop)
        theirs = case["windows_start_end_s"]
        if length > window:  # EfficientAT's formula applies: same starts, our last window ends at the clip
            assert [s / sr for s, _ in ours] == [s for s, _ in theirs]
            assert [e / sr for _, e in ours] == [min(e, length / sr) for _, e in theirs]
            checked += 1
        else:  # EfficientAT yields no window (or one padded window); we tag the whole clip once
            assert ours == [(0, length)]
    assert checked >= 2


def test_window_bounds_drop_a_trailing_sliver():
    assert window_bounds(320010, 320000, 320000, min_length=800) == [(0, 320000)]
    assert window_bounds(320010, 320000, 320000) == [(0, 320000), (320000, 320010)]
    with pytest.raises(ValueError, match="positive"):
        window_bounds(10, 0, 1)


def test_sigmoid_is_stable_and_exact():
    x = np.array([-1000.0, -10.0, 0.0, 10.0, 1000.0])
    np.testing.assert_allclose(sigmoid(x), 1 / (1 + np.exp(-np.clip(x, -700, 700))), rtol=1e-6, atol=1e-30)
    assert np.isfinite(sigmoid(x)).all()
    assert sigmoid(x).dtype == np.float32


def test_top_tags_best_first_ties_by_index():
    tags = top_tags(np.array([0.1, 0.9, 0.5, 0.9], np.float32), LabelSet.placeholder(4), 3)
    assert [(t.index, t.label) for t in tags] == [(1, "class_1"), (3, "class_3"), (2, "class_2")]


def test_whole_clip_is_one_pass(tagger, rng):
    wave = (0.1 * rng.standard_normal(32000 * 5)).astype(np.float32)
    result = tagger.tag(wave, top_k=2)
    assert tagger.backend.calls == [(1, 1, 128, 500)]
    assert result.aggregation == "single" and result.timeline is None
    assert [t.index for t in result.tags] == ([3, 2] if result.scores[3] > 0.5 else [0, 1])


def test_hop_gives_a_timeline_and_max_aggregation(tagger):
    sr = 32000
    quiet, loud = np.full(sr * 4, 1e-4, np.float32), np.full(sr * 4, 0.5, np.float32)
    loud *= np.sign(np.sin(np.arange(len(loud))))  # a loud square-ish wave
    result = tagger.tag(np.concatenate([quiet, loud, quiet]), top_k=4, window_s=4, hop_s=2)
    starts = [s.start for s in result.timeline]
    assert starts == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert [s.end for s in result.timeline] == [4.0, 6.0, 8.0, 10.0, 12.0]
    np.testing.assert_array_equal(result.scores, np.max([s.scores for s in result.timeline], axis=0))
    assert result.aggregation == "max"
    doc = result.to_json(all_scores=True)
    assert set(doc) == {"path", "model", "tags", "duration_s", "aggregation", "scores", "timeline"}
    assert len(doc["scores"]) == 4 and doc["timeline"][2]["start"] == 4.0
    assert all(a["score"] >= b["score"] for a, b in zip(doc["tags"], doc["tags"][1:]))


def test_long_clips_are_windowed_without_a_timeline(tagger):
    wave = np.zeros(int(32000 * (MAX_SINGLE_PASS_S + 5)), np.float32)
    result = tagger.tag(wave)
    assert result.aggregation == "max" and result.timeline is None
    assert len(tagger.backend.calls) == 7  # 65 s in 10 s windows


def test_bad_arguments(tagger):
    with pytest.raises(ValueError, match="top_k"):
        tagger.tag(np.zeros(32000, np.float32), top_k=0)
    for bad in ({"hop_s": -1.0}, {"window_s": 0.0}, {"window_s": 5.0, "hop_s": 0.0}):
        with pytest.raises(ValueError, match="positive"):
            tagger.tag(np.zeros(32000, np.float32), **bad)


def test_top_tags_among_a_subset_of_classes():
    from dymn_edge.runtime.labels import audioset_labels
    from dymn_edge.runtime.tagging import top_tags

    scores = np.zeros(527, dtype=np.float32)
    scores[[0, 74, 75, 396]] = [0.9, 0.4, 0.7, 0.4]  # Speech is the best overall but not watched
    tags = top_tags(scores, audioset_labels(), 3, among=[396, 75, 74])
    assert [(t.index, t.label) for t in tags] == [(75, "Bark"), (74, "Dog"), (396, "Siren")]  # ties by class index
    assert [t.index for t in top_tags(scores, audioset_labels(), 2)] == [0, 75]


def test_file_tagging_and_the_live_stream_cut_the_same_windows(tagger):
    """2.01 s at 32 kHz is 64319.99... as a float product. File tagging truncated it to 64319 samples
    while the stream's Windower rounded to 64320, so the two fed the model different windows."""
    from dymn_edge.runtime.audio import seconds_to_samples
    from dymn_edge.runtime.stream.windows import Windower

    sr = 32000
    assert 2.01 * sr < 64320
    assert seconds_to_samples(2.01, sr) == 64320
    wave = (0.1 * np.random.default_rng(0).standard_normal(sr * 9)).astype(np.float32)
    result = tagger.tag(wave, window_s=2.01, hop_s=2.01)
    windower = Windower(2.01, 2.01, sr)
    assert windower.window == windower.hop == 64320
    assert [round(s.start * sr) for s in result.timeline] == [0, 64320, 128640, 192960, 257280]
    assert round(result.timeline[0].end * sr) == windower.window


def test_streamed_windows_are_the_window_bounds_whatever_the_blocks(rng):
    """stream_windows cuts a clip that arrives in blocks exactly as window_bounds cuts it whole,
    including a trailing sliver shorter than min_length and windows shorter than min_length."""
    for _ in range(2000):
        n, window, hop, min_length = (int(rng.integers(lo, hi)) for lo, hi in ((0, 3000), (1, 600), (1, 700), (1, 40)))
        clip = rng.standard_normal(n).astype(np.float32)
        blocks = np.split(clip, np.sort(rng.integers(0, n + 1, size=int(rng.integers(0, 6)))))
        got = list(stream_windows(iter(blocks), window, hop, min_length))
        assert [(s, e) for s, e, _ in got] == window_bounds(n, window, hop, min_length), (n, window, hop, min_length)
        for s, e, samples in got:
            np.testing.assert_array_equal(samples, clip[s:e])


def test_file_blocks_are_load_audio_bit_for_bit(shared):
    for name in ("glacier_bay_humpback_whale.flac", "brahms_hungarian_dance_5_us_army_strings.flac"):  # mono / stereo, 44.1 kHz
        path = shared / "data" / "streaming" / name
        np.testing.assert_array_equal(np.concatenate(list(file_blocks(path, 32000))), load_audio(path, 32000))


def test_file_blocks_of_a_missing_file_say_so_as_load_audio_does(tmp_path):
    for read in (lambda p: next(file_blocks(p, 32000)), lambda p: load_audio(p, 32000)):
        with pytest.raises(FileNotFoundError, match="gone.flac: no such audio file"):
            read(tmp_path / "gone.flac")


def test_long_files_are_tagged_a_block_at_a_time_as_if_whole(tagger, shared, monkeypatch):
    """Over MAX_SINGLE_PASS_S (or with --window/--hop) a file is decoded and resampled a block at a
    time, so memory stays that of a window; the result equals tagging the whole decoded file."""
    long, stereo = (shared / "data" / "streaming" / n for n in ("glacier_bay_humpback_whale.flac", "brahms_hungarian_dance_5_us_army_strings.flac"))
    expected = tagger.tag(load_audio(long, 32000), path=str(long))
    overlapping = tagger.tag(load_audio(stereo, 32000), path=str(stereo), window_s=5.0, hop_s=2.5)

    def whole_file(*_):
        raise AssertionError("a long file was decoded whole")

    monkeypatch.setattr(tagging, "load_audio", whole_file)
    got = tagger.tag_file(long)
    assert expected.duration_s > MAX_SINGLE_PASS_S and got.aggregation == "max" and got.timeline is None
    assert got.duration_s == expected.duration_s and [t.index for t in got.tags] == [t.index for t in expected.tags]
    np.testing.assert_array_equal(got.scores, expected.scores)
    got = tagger.tag_file(stereo, window_s=5.0, hop_s=2.5)
    assert [(s.start, s.end) for s in got.timeline] == [(s.start, s.end) for s in overlapping.timeline]
    for a, b in zip(got.timeline, overlapping.timeline):
        np.testing.assert_array_equal(a.scores, b.scores)


def test_a_long_file_with_nan_samples_says_where(tagger, tmp_path):
    wave = np.zeros(8000 * 70, np.float32)
    wave[8000 * 30] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, wave, 8000, subtype="FLOAT")
    with pytest.raises(AudioFormatError, match=r"nan\.wav: NaN/inf samples near 30"):
        tagger.tag_file(path)
