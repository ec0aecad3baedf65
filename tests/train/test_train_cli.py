"""`dymn-edge train` end to end through the CLI, and its errors for bad input."""

from __future__ import annotations

import csv

import pytest
from click.testing import CliRunner

from dymn_edge.cli import cli


@pytest.mark.slow
def test_teacher_logits_then_kd_then_resume(kd_sets, tmp_path):
    runner = CliRunner()
    logits = tmp_path / "t.npz"
    r = runner.invoke(cli, ["train", "teacher-logits", "--teacher", "mn04_as", "--data", str(kd_sets["all"]), "--out", str(logits),
                            "--clip-seconds", "2", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "crops of 48 clips, 527 classes, teacher mn04_as" in r.output
    common = ["train", "kd", "--student", "dymn04", "--data", str(kd_sets["train"]), "--val", str(kd_sets["val"]), "--teacher-logits",
              str(logits), "--clip-seconds", "2", "--batch-size", "8", "--epoch-len", "16", "--out", str(tmp_path / "run"), "--quiet"]
    r = runner.invoke(cli, common + ["--epochs", "1"])
    assert r.exit_code == 0, r.output
    assert "export: dymn-edge export onnx" in r.output
    r = runner.invoke(cli, common + ["--epochs", "2", "--resume", str(tmp_path / "run" / "checkpoints" / "epoch_001.pt")])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [row["epoch"] for row in rows] == ["0", "1", "2"]
    assert all(0 <= float(row["teacher_top5"]) <= 1 and 0 <= float(row["val_map"]) <= 1 for row in rows)
    r = runner.invoke(cli, ["export", "onnx", str(tmp_path / "run" / "model.pt"), "--out", str(tmp_path / "bundle"), "--window", "2"])
    assert r.exit_code == 0, r.output


def test_kd_without_a_teacher_is_a_usage_error(kd_sets, tmp_path):
    r = CliRunner().invoke(cli, ["train", "kd", "--student", "dymn04", "--data", str(kd_sets["train"]), "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--teacher-logits FILE or --teacher MODEL" in r.output


def test_missing_files_fail_with_their_names(tmp_path):
    (tmp_path / "m.csv").write_text("path\nnot_here.flac\n")
    r = CliRunner().invoke(cli, ["train", "teacher-logits", "--teacher", "mn04_as", "--data", str(tmp_path / "m.csv"),
                                 "--out", str(tmp_path / "t.npz")])
    assert r.exit_code == 1 and "not_here.flac" in r.output and "do not exist" in r.output


def test_an_empty_logits_file_is_refused(kd_sets, tmp_path):
    (tmp_path / "t.npz").write_bytes(b"")
    r = CliRunner().invoke(cli, ["train", "kd", "--student", "dymn04", "--data", str(kd_sets["train"]), "--teacher-logits",
                                 str(tmp_path / "t.npz"), "--out", str(tmp_path / "run")])
    assert r.exit_code == 1 and "unreadable teacher-logits file" in r.output
