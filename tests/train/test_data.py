"""Training data: folder / CSV / AudioSet-HDF5 sources, crops, class-balanced sampling, rank splits."""

from __future__ import annotations

import csv
import numpy as np
import pytest
import soundfile as sf

from dymn_edge.runtime.errors import TrainingError
from dymn_edge.runtime.labels import audioset_labels
from dymn_edge.train.data import CropDataset, EpochSampler, class_balanced_weights, crop_starts, open_clips


def _esc50_rows(shared, n):
    rows = list(csv.DictReader(open(shared / "data" / "esc50" / "labels.csv")))
    return [r for r in rows if r["audioset_labels"]][:n]


def test_esc50_csv_labels_become_multi_hot_targets(shared):
    clips = open_clips(shared / "data" / "esc50" / "labels.csv", audioset_labels())
    assert len(clips) == 300
    labels = audioset_labels()
    row = 0
    first = list(csv.DictReader(open(shared / "data" / "esc50" / "labels.csv")))[row]
    expected = {labels.find(n).index for n in first["audioset_labels"].split(";") if n}
    assert set(np.flatnonzero(clips.targets[row])) == expected
    assert clips.targets[[i for i, r in enumerate(csv.DictReader(open(shared / "data" / "esc50" / "labels.csv"))) if not r["audioset_labels"]]].sum() == 0
    wave = clips.load(row)
    assert wave.dtype == np.float32 and wave.shape == (160000,)  # 5 s resampled from 44.1 kHz to 32 kHz


def test_mids_work_like_display_names(tmp_path, shared):
    audio = shared / "data" / "esc50" / "audio" / _esc50_rows(shared, 1)[0]["filename"]
    dog = audioset_labels().find("Dog")
    (tmp_path / "m.csv").write_text(f"path,labels\n{audio},{dog.mid}\n")
    assert np.flatnonzero(open_clips(tmp_path / "m.csv", audioset_labels()).targets[0]).tolist() == [dog.index]


def test_missing_files_are_all_listed(tmp_path, shared):
    audio = shared / "data" / "esc50" / "audio" / _esc50_rows(shared, 1)[0]["filename"]
    (tmp_path / "m.csv").write_text(f"path\n{audio}\ngone_1.wav\nsub/gone_2.flac\n")
    with pytest.raises(TrainingError) as e:
        open_clips(tmp_path / "m.csv")
    assert "2 listed audio file(s) do not exist" in str(e.value)
    assert "gone_1.wav" in str(e.value) and "gone_2.flac" in str(e.value)


def test_labels_unknown_to_the_head_are_named(tmp_path, shared):
    audio = shared / "data" / "esc50" / "audio" / _esc50_rows(shared, 1)[0]["filename"]
    (tmp_path / "m.csv").write_text(f"path,labels\n{audio},Dog;Space whale\n")
    with pytest.raises(TrainingError, match="527-class head: 'Space whale'"):
        open_clips(tmp_path / "m.csv", audioset_labels())


def test_csv_without_a_path_column_is_refused(tmp_path):
    (tmp_path / "m.csv").write_text("name,labels\na.wav,Dog\n")
    with pytest.raises(TrainingError, match="expected a path column"):
        open_clips(tmp_path / "m.csv")


def test_audioset_hdf5_layout(audioset_hdf5, shared):
    path, rows, flags = audioset_hdf5
    clips = open_clips(path, audioset_labels())
    assert clips.ids == [r["filename"] for r in rows]
    np.testing.assert_array_equal(clips.targets.astype(bool), flags)
    wave = clips.load(1)
    direct, sr = sf.read(shared / "data" / "esc50" / "audio" / rows[1]["filename"], dtype="float32")
    assert abs(wave.shape[0] - len(direct) * 32000 / sr) < 32000 * 0.1  # MP3 adds encoder padding, no more
    # the decoded MP3 carries the clip: its loudness matches the FLAC original within 1 dB
    rms = lambda x: 20 * np.log10(np.sqrt(np.mean(x**2)))  # noqa: E731
    assert abs(rms(wave) - rms(direct)) < 1.0


def test_hdf5_missing_datasets_are_named(tmp_path):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("audio_name", data=np.array([b"a"]))
    with pytest.raises(TrainingError, match=r"missing dataset\(s\) \['mp3', 'target'\]"):
        open_clips(tmp_path / "x.h5")


def test_crop_grid_covers_the_clip():
    assert crop_starts(100, 40, 20) == [0, 20, 40, 60]
    assert crop_starts(90, 40, 20) == [0, 20, 40, 50]  # the tail gets its own crop
    assert crop_starts(30, 40, 20) == [0]


def test_crops_and_gain_are_a_function_of_seed_epoch_and_index(shared):
    clips = open_clips(shared / "data" / "esc50" / "labels.csv", audioset_labels()).subset(range(4))
    ds = CropDataset(clips, 32000, train=True, gain_db=6, seed=3)
    a, b = ds[2], ds[2]
    assert a["start"] == b["start"] and np.array_equal(a["wave"], b["wave"])
    ds.set_epoch(1)
    starts = {ds[i]["start"] for i in range(4)}
    ds.set_epoch(0)
    assert starts != {ds[i]["start"] for i in range(4)}
    full = clips.load(2)
    gain = a["wave"] / np.where(full[a["start"]:a["start"] + 32000] == 0, 1, full[a["start"]:a["start"] + 32000])
    db = 20 * np.log10(np.median(np.abs(gain[full[a["start"]:a["start"] + 32000] != 0])))
    assert -6 - 1e-3 <= db < 6 and abs(db - round(db)) < 1e-3  # whole dB within +-6


def test_class_balanced_weights_follow_efficientat():
    targets = np.array([[1, 0], [1, 0], [0, 1], [0, 0]], dtype=np.float32)
    w = class_balanced_weights(targets, offset=100)
    np.testing.assert_allclose(w[:3], [1000 / 102, 1000 / 102, 1000 / 101])
    assert w[3] == pytest.approx(w[:3].mean())  # unlabelled clips are still drawn


def test_ranks_split_each_global_batch():
    single = list(EpochSampler(10, batch_size=4, num_samples=10, seed=5))
    ranks = [list(EpochSampler(10, batch_size=4, num_samples=10, seed=5, rank=r, world_size=2)) for r in (0, 1)]
    rebuilt = []
    for b in range(0, 10, 4):
        rebuilt += ranks[0][b // 2:b // 2 + 2][: max(0, min(2, 10 - b))] + ranks[1][b // 2:b // 2 + 2][: max(0, min(2, 10 - b - 2))]
    assert rebuilt == single
    with pytest.raises(TrainingError, match="not divisible"):
        EpochSampler(10, batch_size=3, world_size=2)
