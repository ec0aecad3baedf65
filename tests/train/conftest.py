"""Small real-audio training sets: permissive pool clips to train on, labelled ESC-50 clips held out."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dymn_edge.runtime.labels import audioset_labels


def write_csv(path: Path, rows: list[tuple[str, ...]], header: tuple[str, ...]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="session")
def kd_sets(shared, tmp_path_factory) -> dict[str, Path]:
    """train.csv: 32 pool clips (not non-commercial, not ESC-50); val.csv: 16 labelled ESC-50 clips; all.csv: both."""
    root = tmp_path_factory.mktemp("kd")
    pool = [r for r in csv.DictReader(open(shared / "data" / "pool" / "labels.csv"))
            if r["noncommercial"].strip().lower() != "yes" and not r["filename"].startswith("esc50_")]
    train = [str(shared / "data" / "pool" / r["filename"]) for r in pool[::10][:32]]
    esc = [r for r in csv.DictReader(open(shared / "data" / "esc50" / "labels.csv")) if r["audioset_labels"]][::17][:16]
    val = [(str(shared / "data" / "esc50" / "audio" / r["filename"]), r["audioset_labels"]) for r in esc]
    return {
        "train": write_csv(root / "train.csv", [(p,) for p in train], ("path",)),
        "val": write_csv(root / "val.csv", val, ("path", "audioset_labels")),
        "all": write_csv(root / "all.csv", [(p,) for p in train] + [(p,) for p, _ in val], ("path",)),
        "root": root,
    }


def write_audioset_hdf5(path, shared, n=4):
    """EfficientAT / PaSST layout: audio_name, mp3 (vlen uint8 of an encoded MP3), packed 527-bit targets."""
    h5py = pytest.importorskip("h5py")
    rows = [r for r in csv.DictReader(open(shared / "data" / "esc50" / "labels.csv")) if r["audioset_labels"]][:n]
    labels = audioset_labels()
    waves, flags = [], []
    with h5py.File(path, "w") as f:
        f.create_dataset("audio_name", data=np.array([r["filename"].encode() for r in rows]))
        mp3 = f.create_dataset("mp3", (n,), dtype=h5py.vlen_dtype(np.uint8))
        targets = np.zeros((n, 527), dtype=bool)
        for i, r in enumerate(rows):
            wave, sr = sf.read(shared / "data" / "esc50" / "audio" / r["filename"], dtype="float32")
            buf = io.BytesIO()
            sf.write(buf, wave, sr, format="MP3")
            mp3[i] = np.frombuffer(buf.getvalue(), dtype=np.uint8)
            for name in r["audioset_labels"].split(";"):
                targets[i, labels.find(name).index] = True
            waves.append(wave)
            flags.append(targets[i])
        f.create_dataset("target", data=np.packbits(targets, axis=-1))
    return rows, np.array(flags)


@pytest.fixture(scope="session")
def audioset_hdf5(shared, tmp_path_factory):
    """Six labelled ESC-50 clips in the AudioSet HDF5 layout: (path, rows, flags)."""
    path = tmp_path_factory.mktemp("hdf5") / "balanced_train_segments_mp3.hdf"
    rows, flags = write_audioset_hdf5(path, shared, n=6)
    return path, rows, flags
