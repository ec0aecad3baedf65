import csv

import pytest

from dymn_edge.runtime.errors import BundleError
from dymn_edge.runtime.labels import LabelSet, audioset_labels, read_labels, write_labels


def test_audioset_labels_are_the_527_standard_classes(shared):
    labels = audioset_labels()
    assert len(labels) == 527
    with open(shared / "data" / "audioset" / "class_labels_indices.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(label.index, label.mid, label.name) for label in labels] == [
        (int(r["index"]), r["mid"], r["display_name"]) for r in rows
    ]
    assert labels[0].name == "Speech" and labels[136].name == "Whale vocalization"
    assert labels.find("/m/09x0r").index == 0
    assert labels.find("Male speech, man speaking").index == 1  # names with commas survive CSV


def test_round_trip_and_placeholder(tmp_path):
    path = tmp_path / "labels.csv"
    write_labels(audioset_labels(), path)
    assert read_labels(path).names == audioset_labels().names
    assert LabelSet.placeholder(3).names == ["class_0", "class_1", "class_2"]


def test_bad_label_files(tmp_path):
    (tmp_path / "a.csv").write_text("idx,name\n0,x\n")
    with pytest.raises(BundleError, match="expected CSV columns"):
        read_labels(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("index,mid,display_name\n1,/m/x,x\n")
    with pytest.raises(BundleError, match="expected 0"):
        read_labels(tmp_path / "b.csv")
    with pytest.raises(KeyError, match="unknown label"):
        audioset_labels().find("Not a class")

