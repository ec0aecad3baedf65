"""Calibration audio: listing, windows through the runtime frontend, balanced sampling, cache, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from dymn_edge.calibration.dataset import build_feature_set, list_audio
from dymn_edge.runtime.audio import load_audio
from dymn_edge.runtime.errors import CalibrationError
from dymn_edge.runtime.frontend import log_mel
from dymn_edge.runtime.labels import audioset_labels


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DYMN_EDGE_CACHE", str(tmp_path / "cache"))


def test_features_are_the_runtime_frontend_on_windows_of_the_bundle_length(shared):
    data = build_feature_set(shared / "data" / "streaming", window_s=10.0, progress=False, min_samples=1)
    whale = shared / "data" / "streaming" / "glacier_bay_humpback_whale.flac"
    windows = [i for i, (path, _) in enumerate(data.windows) if path == str(whale)]
    assert [data.windows[i][1] for i in windows] == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0]  # 64.8 s: the last window is 4.8 s
    wave = load_audio(whale)
    np.testing.assert_array_equal(data.features[windows[1]][0, 0], log_mel(wave[320000:640000]))
    assert data.targets is None and not data.skipped


def test_csv_labels_and_class_balanced_sampling(shared):
    labels = audioset_labels()
    csv = shared / "data" / "esc50" / "labels.csv"
    every = build_feature_set(csv, window_s=10.0, labels=labels, progress=False)
    assert len(every) == 300 and every.targets.shape == (300, 527)
    classes = np.flatnonzero(every.targets.sum(axis=0))
    assert len(classes) == 95
    # One round of the class-balanced draw: 95 windows cover all 95 mapped AudioSet classes. A uniform
    # draw of 95 of the 300 clips misses classes that only a few clips carry (checked below).
    some = build_feature_set(csv, window_s=10.0, labels=labels, samples=95, progress=False)
    assert len(some) == 95 and (some.targets[:, classes].sum(axis=0) > 0).all()
    rng = np.random.default_rng(0)
    uniform_misses = [int((every.targets[rng.choice(300, 95, replace=False)][:, classes].sum(axis=0) == 0).sum()) for _ in range(20)]
    assert min(uniform_misses) > 0


def test_cache_makes_the_second_run_skip_decoding(shared, monkeypatch):
    folder = shared / "data" / "streaming"
    first = build_feature_set(folder, window_s=10.0, progress=False, min_samples=1)
    calls = []
    import dymn_edge.calibration.dataset as dataset

    decode = dataset.file_blocks
    monkeypatch.setattr(dataset, "file_blocks", lambda *a, **k: calls.append(a) or decode(*a, **k))
    second = build_feature_set(folder, window_s=10.0, progress=False, min_samples=1)
    assert not calls and all(np.array_equal(a, b) for a, b in zip(first.features, second.features))


@pytest.mark.parametrize("window_s", [10.0, 3.3])
def test_files_are_decoded_a_block_at_a_time_into_the_same_windows(shared, tmp_path, window_s):
    """A 45.8 s stereo file at 44.1 kHz, read a second at a time: every window's features equal the
    frontend on the whole-file decode's samples (bit for bit), the last shorter piece included. A
    30-minute stereo file took 1550 MB decoded whole, 142 MB this way (docs/calibration.md)."""
    from dymn_edge.runtime.audio import seconds_to_samples

    brahms = shared / "data" / "streaming" / "brahms_hungarian_dance_5_us_army_strings.flac"
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / brahms.name).symlink_to(brahms)
    data = build_feature_set(tmp_path / "one", window_s=window_s, progress=False, min_samples=1, use_cache=False)
    wave, window = load_audio(brahms), seconds_to_samples(window_s)
    starts = list(range(0, len(wave), window))
    assert [start for _, start in data.windows] == [s / 32000 for s in starts]
    for feature, start in zip(data.features, starts):
        np.testing.assert_array_equal(feature[0, 0], log_mel(wave[start:start + window]))


def test_bad_input(tmp_path, shared):
    labels = audioset_labels()
    folder = tmp_path / "audio"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        sf.write(folder / f"noise{i}.wav", 0.1 * rng.standard_normal(32000 * 12), 32000)
    (folder / "broken.wav").write_bytes(b"RIFF not really a wav")
    sf.write(folder / "silence.wav", np.zeros(32000 * 3), 32000)
    sf.write(folder / "empty.wav", np.zeros(0), 32000)
    with pytest.raises(CalibrationError, match=r"7 usable window\(s\) of 10 s from 4 file\(s\); need at least 16 .*2 file\(s\) skipped"):
        build_feature_set(folder, window_s=10.0, progress=False)
    data = build_feature_set(folder, window_s=10.0, progress=False, min_samples=1)
    # skipped and listed, never silently, with the reason
    assert [(p.rsplit("/", 1)[-1], "cannot read audio" in r or "no audio samples" in r) for p, r in data.skipped] == [
        ("broken.wav", True), ("empty.wav", True)]
    assert any("silence.wav: silent or constant audio" in w for w in data.warnings)
    with pytest.raises(CalibrationError, match="--samples 3 is too few; need at least 16"):
        build_feature_set(shared / "data" / "esc50" / "labels.csv", window_s=10.0, samples=3, progress=False)
    csv = tmp_path / "labels.csv"
    csv.write_text("path,labels\naudio/noise0.wav,Dog;Woof woof\naudio/noise1.wav,Laughter;Giggle monster\n")
    with pytest.raises(CalibrationError, match="labels not in the model's ontology: 'Giggle monster', 'Woof woof'"):
        build_feature_set(csv, window_s=10.0, labels=labels, progress=False, min_samples=1)
    csv.write_text("path,labels\naudio/noise0.wav,Dog\naudio/gone.wav,Dog\n")
    data = build_feature_set(csv, window_s=10.0, labels=labels, progress=False, min_samples=1)
    assert [(p.rsplit("/", 1)[-1], r) for p, r in data.skipped] == [("gone.wav", "No such file or directory")]
    (tmp_path / "no_path.csv").write_text("name,labels\nx.wav,Dog\n")
    with pytest.raises(CalibrationError, match="needs a column named one of path, filename, file"):
        list_audio(tmp_path / "no_path.csv")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CalibrationError, match="no audio files"):
        list_audio(empty)
