"""Teacher logits: what the teacher really outputs per crop, stored and checked against the run that uses them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dymn_edge.runtime.bundle import load_bundle
from dymn_edge.runtime.errors import TrainingError
from dymn_edge.runtime.registry import embedded_bundle_path
from dymn_edge.train.data import fit_length, open_clips
from dymn_edge.train.teacher import TeacherLogits, _BundleTeacher, compute_teacher_logits, load_teacher


@pytest.fixture(scope="module")
def stored(kd_sets):
    clips = open_clips(kd_sets["val"]).subset(range(3))
    teacher = load_teacher(["mn04_as"])
    return clips, teacher, compute_teacher_logits(teacher, clips, crop_samples=64000, hop_samples=32000, batch_size=4)


def test_logits_are_the_teachers_output_on_each_crop(stored, mn04_checkpoint):
    clips, _, logits = stored
    assert logits.num_classes == 527
    assert sorted(set(logits.clip_index.tolist())) == [0, 1, 2]
    assert len(logits.logits) == 3 * 4  # 5 s clips, 2 s crops every 1 s: starts 0, 1, 2, 3 s
    from dymn_edge.train import load_checkpoint
    from dymn_edge.train.frontend import MelSTFT

    model = load_checkpoint(mn04_checkpoint).model
    r = 5
    wave = fit_length(clips.load(int(logits.clip_index[r])), int(logits.starts[r]), 64000)
    with torch.no_grad():
        direct = model(MelSTFT().eval()(torch.from_numpy(wave)[None]).unsqueeze(1))[0][0].numpy()
    np.testing.assert_allclose(logits.logits[r], direct, atol=1e-4)


def test_onnx_bundle_teacher_agrees_with_the_checkpoint(stored):
    clips, teacher, _ = stored
    wave = torch.from_numpy(np.stack([fit_length(clips.load(i), 0, 64000) for i in range(3)]))
    onnx = _BundleTeacher(load_bundle(embedded_bundle_path()), threads=1)(wave)
    np.testing.assert_allclose(onnx.numpy(), teacher(wave).numpy(), atol=2e-3)


def test_ensemble_averages_logits(stored):
    clips, teacher, _ = stored
    pair = load_teacher(["mn04_as", "mn04_as"])
    wave = torch.from_numpy(fit_length(clips.load(0), 0, 64000))[None]
    np.testing.assert_allclose(pair(wave).numpy(), teacher(wave).numpy(), atol=1e-6)


def test_save_load_round_trip(stored, tmp_path):
    _, _, logits = stored
    back = TeacherLogits.load(logits.save(tmp_path / "t.npz"))
    assert back.clip_ids == logits.clip_ids and back.teachers == ["mn04_as"] and back.crop_samples == 64000
    np.testing.assert_array_equal(back.logits, logits.logits)
    np.testing.assert_array_equal(back.starts, logits.starts)


def test_logits_for_another_class_count_crop_or_clip_set_are_refused(stored, kd_sets):
    clips, _, logits = stored
    with pytest.raises(TrainingError, match="527 classes but the student predicts 10"):
        logits.check(clips, 10, 64000)
    with pytest.raises(TrainingError, match="2 s crops, training uses 5 s"):
        logits.check(clips, 527, 160000)
    others = open_clips(kd_sets["train"]).subset(range(2))
    with pytest.raises(TrainingError, match="no logits for 2 of 2 training clips"):
        logits.check(others, 527, 64000)


def test_not_a_logits_file(tmp_path):
    np.savez(tmp_path / "x.npz", meta="{}")
    with pytest.raises(TrainingError, match="not a teacher-logits file"):
        TeacherLogits.load(tmp_path / "x.npz")
    with pytest.raises(TrainingError, match="no such teacher-logits file"):
        TeacherLogits.load(tmp_path / "nope.npz")
