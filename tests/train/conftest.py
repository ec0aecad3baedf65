"""Small real-audio training sets: permissive pool clips to train on, labelled ESC-50 clips held out."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest


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
