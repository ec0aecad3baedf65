"""Fine-tuning on new labels: a new head learns the user's classes, and the result exports and tags with them."""

from __future__ import annotations

import csv

import pytest
from click.testing import CliRunner

from dymn_edge.cli import cli
from dymn_edge.runtime.errors import TrainingError
from dymn_edge.train.recipes import finetune
from dymn_edge.train.trainer import TrainConfig

CLASSES = ("dog", "rooster", "church_bells", "siren")


@pytest.fixture(scope="module")
def four_classes(shared, tmp_path_factory):
    """ESC-50 clips of four categories with their ESC-50 names as the new labels: 4 per class to train, 2 to validate."""
    root = tmp_path_factory.mktemp("ft")
    rows = [r for r in csv.DictReader(open(shared / "data" / "esc50" / "labels.csv")) if r["esc50_category"] in CLASSES]
    by_class = {c: [r for r in rows if r["esc50_category"] == c] for c in CLASSES}
    out = {}
    for split, part in (("train", slice(0, 4)), ("val", slice(4, 6))):
        with open(root / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label"])
            for c in CLASSES:
                for r in by_class[c][part]:
                    w.writerow([shared / "data" / "esc50" / "audio" / r["filename"], c])
        out[split] = root / f"{split}.csv"
    return out


@pytest.mark.slow
def test_new_head_learns_new_labels_and_exports(four_classes, tmp_path):
    config = TrainConfig(epochs=6, batch_size=8, clip_seconds=5.0, lr=3e-3, mixup_alpha=0.0, timem=48, last_lr_value=0.1)
    trainer = finetune("mn04_as", four_classes["train"], tmp_path / "run", config, val=four_classes["val"], freeze=-1,
                       single_label=True, progress=False)
    h = trainer.history
    assert h[-1]["val_map"] > 0.8 > h[0]["val_map"], [r["val_map"] for r in h]  # chance for 4 classes is ~0.25-0.5
    labels = (tmp_path / "run" / "labels.csv").read_text()
    assert all(c in labels for c in CLASSES)
    runner = CliRunner()
    result = runner.invoke(cli, ["export", "onnx", str(tmp_path / "run" / "model.pt"), "--out", str(tmp_path / "bundle")])
    assert result.exit_code == 0, result.output
    clip = next(csv.DictReader(open(four_classes["val"])))
    result = runner.invoke(cli, ["tag", "--model", str(tmp_path / "bundle"), clip["path"], "--json", "-k", "1"])
    assert result.exit_code == 0, result.output
    assert clip["label"] in result.output


def test_single_label_needs_one_label_per_clip(four_classes, tmp_path):
    rows = list(csv.DictReader(open(four_classes["train"])))
    with open(tmp_path / "multi.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerow([rows[0]["path"], "dog;siren"])
        w.writerows([[r["path"], r["label"]] for r in rows[1:]])
    with pytest.raises(TrainingError, match="exactly one label per clip"):
        finetune("mn04_as", tmp_path / "multi.csv", tmp_path / "run", TrainConfig(epochs=1), single_label=True, progress=False)


def test_folder_without_labels_is_refused(shared, tmp_path):
    with pytest.raises(TrainingError, match="fine-tuning needs labels"):
        finetune("mn04_as", shared / "data" / "streaming", tmp_path, TrainConfig(epochs=1), progress=False)


def test_too_many_frozen_blocks(four_classes, tmp_path):
    with pytest.raises(TrainingError, match="only 16 blocks"):
        finetune("mn04_as", four_classes["train"], tmp_path, TrainConfig(epochs=1), freeze=40, val_fraction=0, progress=False)
