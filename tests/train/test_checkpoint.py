"""Checkpoint loading: the real mn04_as release, architecture inference, and every bad file."""

import os
import pickle

import numpy as np
import pytest
import torch

from dymn_edge.runtime.errors import CheckpointError
from dymn_edge.runtime.labels import audioset_labels
from dymn_edge.train.checkpoint import infer_config, load_checkpoint, read_state_dict, save_checkpoint
from dymn_edge.train.frontend import TorchLogMel
from dymn_edge.train.models import DyMNConfig, MNConfig, build_model

MN04_SHA = "899a8c6217063f6941793102a2780b3dd788ab11fce468d9cf5f0577c453321c"


def test_real_mn04_as_loads_strictly_and_tags_real_audio(mn04_checkpoint, fixtures_dir):
    loaded = load_checkpoint(mn04_checkpoint, expect={"family": "mn", "width_mult": 0.4, "num_classes": 527})
    assert loaded.sha256 == MN04_SHA
    assert sum(p.numel() for p in loaded.model.parameters()) == 983_599
    import soundfile as sf

    from dymn_edge.runtime.audio import resample

    wave, sr = sf.read(fixtures_dir / "metro_station-paris.wav", dtype="float32")
    mel = TorchLogMel()(resample(wave, sr, 32000))
    with torch.no_grad():
        logits, embedding = loaded.model(torch.from_numpy(mel)[None, None])
    assert embedding.shape == (1, 384)
    top = torch.sigmoid(logits[0]).argsort(descending=True)[:5].tolist()
    names = [audioset_labels()[i].name for i in top]
    assert names[0] == "Train" and "Subway, metro, underground" in names


def test_espeak_speech_is_speech(mn04_checkpoint, tmp_path):
    """shared/weights/MANIFEST.md: an espeak-ng sentence gives Speech and Speech synthesizer on top."""
    import shutil
    import subprocess

    if shutil.which("espeak-ng") is None:
        if os.environ.get("DYMN_REQUIRE_ESPEAK") == "1":
            pytest.fail("espeak-ng missing (apt-get install -y espeak-ng)")
        pytest.skip("espeak-ng not installed (apt-get install -y espeak-ng)")
    wav = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "The quick brown fox jumps over the lazy dog. "
                    "This sentence was synthesized to test an audio tagger."], check=True)
    from dymn_edge.runtime.audio import load_audio

    loaded = load_checkpoint(mn04_checkpoint)
    with torch.no_grad():
        logits, _ = loaded.model(torch.from_numpy(TorchLogMel()(load_audio(wav)))[None, None])
    probs = torch.sigmoid(logits[0])
    top2 = {audioset_labels()[i].name for i in probs.argsort(descending=True)[:2].tolist()}
    assert top2 == {"Speech", "Speech synthesizer"}
    assert probs[0] > 0.3


@pytest.mark.parametrize(
    "config",
    [
        MNConfig(width_mult=0.4),
        MNConfig(width_mult=1.0, num_classes=50),
        MNConfig(width_mult=0.5, head_type="fully_convolutional"),
        MNConfig(width_mult=2.0, se_dims="none"),
        MNConfig(width_mult=1.0, se_dims="ct"),
        MNConfig(width_mult=0.4, head_type="multihead_attention_pooling"),
        MNConfig(width_mult=0.75),
        DyMNConfig(width_mult=0.4),
        DyMNConfig(width_mult=2.0),
        DyMNConfig(width_mult=0.4, use_dy_blocks="replace_se"),
        DyMNConfig(width_mult=0.4, no_dyrelu=True, dyconv_k=2),
        DyMNConfig(width_mult=0.4, no_dyconv=True),
        DyMNConfig(width_mult=1.0, reduced_tail=True),
        DyMNConfig(width_mult=0.4, dyrelu_k=3, head_type="fully_convolutional", num_classes=10),
    ],
    ids=lambda c: f"{c.name}-{c.num_classes}-{c.head_type}",
)
def test_architecture_is_inferred_from_shapes(config):
    with torch.device("meta"):
        model = build_model(config)
    state = {k: torch.empty(v.shape, dtype=v.dtype) for k, v in model.state_dict().items()}
    assert infer_config(state).to_dict() == config.to_dict()


def test_wrapped_and_prefixed_state_dicts(mn04_checkpoint, tmp_path):
    state = torch.load(mn04_checkpoint, weights_only=True)
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 3}, tmp_path / "ddp.pt")
    loaded = load_checkpoint(tmp_path / "ddp.pt")
    assert loaded.config.width_mult == 0.4
    torch.testing.assert_close(loaded.model.state_dict()["classifier.5.bias"], state["classifier.5.bias"])
    _, meta = read_state_dict(tmp_path / "ddp.pt")
    assert meta == {"epoch": 3}


def test_save_checkpoint_round_trip_keeps_config_and_temperature(tmp_path):
    config = DyMNConfig(width_mult=0.4, num_classes=10, strides=(2, 2, 2, 1))  # strides cannot be inferred
    model = build_model(config)
    model.set_temperature(7.0)
    save_checkpoint(model, tmp_path / "ours.pt", epoch=1)
    loaded = load_checkpoint(tmp_path / "ours.pt")
    assert loaded.config == config and loaded.temperature == 7.0
    plain = load_checkpoint(tmp_path / "ours.pt", temperature=1.0)
    assert plain.model.temperature == 1.0


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def _write_bad_files(directory, mn04_checkpoint):
    good = mn04_checkpoint.read_bytes()
    (directory / "truncated.pt").write_bytes(good[: len(good) // 2])
    (directory / "random.pt").write_bytes(np.random.default_rng(0).bytes(5000))
    (directory / "empty.pt").write_bytes(b"")
    torch.save({"weights": _Payload()}, directory / "code_zip.pt")
    torch.save({"weights": _Payload()}, directory / "code_legacy.pt", _use_new_zipfile_serialization=False)
    (directory / "code_pickle.pt").write_bytes(pickle.dumps({"weights": _Payload()}))
    torch.save([1, 2, 3], directory / "list.pt")
    torch.save({"foo.weight": torch.zeros(3)}, directory / "foreign.pt")
    torch.save({"classifier.5.weight": "not a tensor"}, directory / "strings.pt")
    state = torch.load(mn04_checkpoint, weights_only=True)
    state["features.5.block.0.0.weight"] = torch.zeros(10, 16, 1, 1)
    torch.save(state, directory / "wrong_width.pt")


@pytest.mark.parametrize(
    "name, message",
    [
        ("truncated", "not a readable PyTorch checkpoint, or truncated"),
        ("random", "not a PyTorch checkpoint"),
        ("empty", "not a readable PyTorch checkpoint, or truncated"),
        ("code_zip", r"refused: the file carries Python objects that would run code when loaded \(posix.system"),
        ("code_legacy", r"refused: .*\(posix.system"),
        ("code_pickle", r"refused: .*\(posix.system"),
        ("list", "expected a state dict .* got list"),
        ("foreign", "not an EfficientAT MobileNetV3 or DyMN state dict"),
        ("strings", "expected a state dict of tensors; 'classifier.5.weight' is str"),
        ("wrong_width", r"matches no EfficientAT mn architecture; as mn04 .*'features.5.block.0.0.weight' has shape \[10, 16, 1, 1\], the architecture expects \[48, 16, 1, 1\]"),
    ],
)
def test_bad_checkpoints_get_clear_errors_naming_the_file(tmp_path, mn04_checkpoint, capfd, name, message):
    _write_bad_files(tmp_path, mn04_checkpoint)
    path = tmp_path / f"{name}.pt"
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert "this must never run" not in capfd.readouterr().out


def test_expected_architecture_mismatch(mn04_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match=r"expected width_mult=1.0 but the checkpoint is width_mult=0.4 \(mn04\)"):
        load_checkpoint(mn04_checkpoint, expect={"width_mult": 1.0})
    state = torch.load(mn04_checkpoint, weights_only=True)
    state["classifier.5.weight"], state["classifier.5.bias"] = state["classifier.5.weight"][:50], state["classifier.5.bias"][:50]
    torch.save(state, tmp_path / "c50.pt")
    assert load_checkpoint(tmp_path / "c50.pt").config.num_classes == 50
    with pytest.raises(CheckpointError, match="c50.pt: expected num_classes=527 but the checkpoint is num_classes=50"):
        load_checkpoint(tmp_path / "c50.pt", expect={"num_classes": 527})
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")
