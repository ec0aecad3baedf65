"""The KD recipe on real audio: it learns, resumes bit-exactly, refuses wrong inputs, and writes EfficientAT layouts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dymn_edge.runtime.errors import TrainingError
from dymn_edge.train import load_checkpoint
from dymn_edge.train.recipes import distill, teacher_logits
from dymn_edge.train.trainer import TrainConfig, mixup


@pytest.fixture(scope="module")
def logits_2s(kd_sets):
    """mn04_as logits on 2 s crops of the train and validation clips."""
    return teacher_logits(["mn04_as"], kd_sets["all"], kd_sets["root"] / "mn04_2s.npz", clip_seconds=2.0, hop_seconds=1.0)


def _tiny(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=4, clip_seconds=2.0, epoch_len=8, kd_lambda=0.0, lr=3e-4, timem=48, cache_audio=True)
    return TrainConfig(**(base | kw))


@pytest.mark.slow
def test_short_cpu_run_reduces_loss_and_raises_teacher_agreement(kd_sets, logits_2s, tmp_path):
    """48 real clips, 2 s crops, a warm start from the teacher: agreement on held-out ESC-50 clips must rise."""
    config = TrainConfig(epochs=4, batch_size=16, clip_seconds=2.0, epoch_len=64, kd_lambda=0.0, lr=3e-4, timem=48)
    trainer = distill("dymn04", kd_sets["train"], tmp_path, config, teacher_logits_file=logits_2s and kd_sets["root"] / "mn04_2s.npz",
                      val=kd_sets["val"], init="mn04_as", progress=False)
    h = trainer.history
    assert [r["epoch"] for r in h] == [0, 1, 2, 3, 4]
    assert h[-1]["train_loss"] < h[1]["train_loss"]
    assert h[-1]["teacher_top5"] > h[0]["teacher_top5"] + 0.02, [r["teacher_top5"] for r in h]
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 6
    assert (tmp_path / "tensorboard").is_dir() and any((tmp_path / "tensorboard").iterdir())


def test_resume_continues_bit_exactly(kd_sets, logits_2s, tmp_path):
    logits_file = kd_sets["root"] / "mn04_2s.npz"
    straight = distill("dymn04", kd_sets["train"], tmp_path / "a", _tiny(), teacher_logits_file=logits_file,
                       val_fraction=0, progress=False)
    resumed = distill("dymn04", kd_sets["train"], tmp_path / "b", _tiny(), teacher_logits_file=logits_file,
                      val_fraction=0, resume=tmp_path / "a" / "checkpoints" / "epoch_001.pt", progress=False)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]
    assert resumed.history[-1]["train_loss"] == straight.history[-1]["train_loss"]
    # and the run did move the weights: resuming from epoch 1 is not the same as stopping there
    first = torch.load(tmp_path / "a" / "checkpoints" / "epoch_001.pt", weights_only=True)["state_dict"]
    assert any(not torch.equal(first[k], a[k]) for k in a if a[k].dtype.is_floating_point)


def test_resume_from_another_architecture_is_refused(kd_sets, logits_2s, tmp_path):
    logits_file = kd_sets["root"] / "mn04_2s.npz"
    distill("dymn04", kd_sets["train"], tmp_path / "a", _tiny(epochs=1), teacher_logits_file=logits_file, val_fraction=0, progress=False)
    with pytest.raises(TrainingError, match="another architecture.*width_mult"):
        distill("dymn10", kd_sets["train"], tmp_path / "b", _tiny(), teacher_logits_file=logits_file, val_fraction=0,
                resume=tmp_path / "a" / "checkpoints" / "epoch_001.pt", progress=False)
    torch.save({"state_dict": {}}, tmp_path / "plain.pt")
    with pytest.raises(TrainingError, match="not a dymn-edge training checkpoint"):
        distill("dymn04", kd_sets["train"], tmp_path / "c", _tiny(), teacher_logits_file=logits_file, val_fraction=0,
                resume=tmp_path / "plain.pt", progress=False)


def test_outputs_load_in_efficientat_layout(kd_sets, logits_2s, tmp_path, fixtures_dir):
    distill("dymn04", kd_sets["train"], tmp_path, _tiny(epochs=1), teacher_logits_file=kd_sets["root"] / "mn04_2s.npz",
            val_fraction=0, progress=False)
    state = torch.load(tmp_path / "efficientat_state_dict.pt", weights_only=True)
    layout = json.loads((fixtures_dir / "state_dict_dymn04.json").read_text())
    entries = layout.get("entries") or layout.get("state_dict") or {k: v for k, v in layout.items() if isinstance(v, dict) and "shape" in v}
    assert set(state) == set(entries)
    assert all(list(state[k].shape) == entries[k]["shape"] for k in state)
    loaded = load_checkpoint(tmp_path / "model.pt")
    assert loaded.config.family == "dymn" and loaded.config.width_mult == 0.4
    assert loaded.temperature is not None and math.isfinite(loaded.temperature)


def test_labels_needed_for_a_label_loss(kd_sets, logits_2s, tmp_path):
    with pytest.raises(TrainingError, match="no labels, so the label loss"):
        distill("dymn04", kd_sets["train"], tmp_path, _tiny(kd_lambda=0.1), teacher_logits_file=kd_sets["root"] / "mn04_2s.npz",
                val_fraction=0, progress=False)


def test_teacher_logits_from_another_clip_set_are_refused(kd_sets, tmp_path):
    other = teacher_logits(["mn04_as"], kd_sets["val"], tmp_path / "val_only.npz", clip_seconds=2.0)
    with pytest.raises(TrainingError, match="no logits for 32 of 32 training clips"):
        distill("dymn04", kd_sets["train"], tmp_path / "run", _tiny(), teacher_logits_file=tmp_path / "val_only.npz",
                val_fraction=0, progress=False)
    assert other.num_classes == 527


def test_validation_clips_must_not_be_training_clips(kd_sets, logits_2s, tmp_path):
    with pytest.raises(TrainingError, match="also training clips"):
        distill("dymn04", kd_sets["all"], tmp_path, _tiny(), teacher_logits_file=kd_sets["root"] / "mn04_2s.npz",
                val=kd_sets["val"], progress=False)


def test_mixup_draws_lambda_at_least_half_and_a_permutation():
    g = torch.Generator().manual_seed(0)
    perm, lam = mixup(64, 0.3, g)
    assert sorted(perm.tolist()) == list(range(64))
    assert (lam >= 0.5).all() and (lam <= 1).all() and lam.std() > 0.05
    g2 = torch.Generator().manual_seed(0)
    assert torch.equal(mixup(64, 0.3, g2)[1], lam)


def test_student_names(tmp_path):
    from dymn_edge.train.recipes import build_student

    assert build_student("0.5", 10).config.width_mult == 0.5
    assert build_student("dymn10", 527).config.width_mult == 1.0
    with pytest.raises(TrainingError, match="expected dymn04, dymn10, dymn20 or a width"):
        build_student("resnet50", 527)


def test_online_teacher_on_audioset_hdf5_with_worker_processes(audioset_hdf5, tmp_path):
    """The AudioSet HDF5 layout through the whole loop, as a user runs it: labels + an online teacher,
    two loader workers. A subprocess, so the workers start from a plain CLI process (not from pytest's,
    which holds its captured file descriptors and everything earlier tests loaded)."""
    import csv
    import subprocess
    import sys

    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "dymn_edge.cli", "train", "kd", "--student", "dymn04", "--data", str(audioset_hdf5[0]),
         "--teacher", "mn04_as", "--kd-lambda", "0.1", "--workers", "2", "--epochs", "1", "--epoch-len", "8", "--batch-size", "4",
         "--clip-seconds", "2", "--timem", "48", "--val-fraction", "0.34", "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = list(csv.DictReader(open(out / "metrics.csv")))[-1]
    assert row["epoch"] == "1"
    assert float(row["label_loss"]) > 0 and float(row["distillation_loss"]) > 0
    assert 0 <= float(row["val_map"]) <= 1 and 0 <= float(row["teacher_top5"]) <= 1


def test_the_shipped_distilled_dymn_is_what_its_manifest_says(shared):
    """dymn04_edge: a verified bundle whose ONNX model matches its own checkpoint."""
    from dymn_edge.runtime.bundle import load_bundle
    from dymn_edge.runtime.registry import embedded_bundle_path
    from dymn_edge.runtime.tagging import Tagger
    from dymn_edge.train.inference import torch_tagger

    bundle = load_bundle(embedded_bundle_path("dymn04_edge"))
    assert bundle.family == "dymn" and bundle.num_classes == 527
    assert bundle.manifest["training"]["teacher"] == "mn04_as"
    clip = shared / "data" / "esc50" / "audio" / "4-181865-A-38.flac"
    if not clip.exists():
        clip = sorted((shared / "data" / "esc50" / "audio").glob("*.flac"))[0]
    from dymn_edge.runtime.audio import load_audio

    wave = load_audio(clip)
    onnx = Tagger.from_bundle(bundle).scores(wave)
    eager = torch_tagger(bundle).scores(wave)
    np.testing.assert_allclose(onnx, eager, atol=1e-4)


@pytest.mark.slow
def test_the_shipped_distilled_dymn_scores_what_the_docs_say(shared, tmp_path):
    """Re-measure dymn04_edge against mn04_as on the 300 held-out ESC-50 clips (never trained on)."""
    from click.testing import CliRunner

    from dymn_edge.cli import cli
    from dymn_edge.runtime.registry import embedded_bundle_path

    r = CliRunner().invoke(cli, ["validate", "--reference", str(embedded_bundle_path("mn04_as")), "--candidate",
                                 str(embedded_bundle_path("dymn04_edge")), "--audio", str(shared / "data" / "esc50" / "labels.csv"),
                                 "--report", str(tmp_path), "--threads", "1"])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "report.json").read_text())
    student = report["candidates"][0]
    recorded = json.loads((embedded_bundle_path("dymn04_edge") / "manifest.json").read_text())["training"]["held_out_results"]
    assert student["labelled"]["map"] == pytest.approx(recorded["map_mapped_esc50"], abs=0.005)
    assert report["reference"]["labelled"]["map"] == pytest.approx(recorded["teacher_map"], abs=0.005)
    assert student["fidelity"]["top5_agreement"] == pytest.approx(recorded["top5_agreement_with_teacher"], abs=0.01)
    assert student["labelled"]["top5_hit"] == pytest.approx(recorded["top5_hit"], abs=0.01)
