"""The torch frontend equals the numpy reference in eval mode and augments like EfficientAT in train mode."""

import numpy as np
import pytest
import torch

from dymn_edge.runtime.errors import AudioFormatError
from dymn_edge.runtime.frontend import log_mel
from dymn_edge.train.frontend import MelSTFT, TorchLogMel, mask_along_axis


@pytest.fixture(scope="module")
def reference(fixtures_dir):
    return np.load(fixtures_dir / "frontend_reference.npz")


@pytest.mark.parametrize("name, wave_key", [("metro", "metro_wave_32k"), ("sine", "sine_wave"), ("silence", "silence_wave")])
def test_torch_frontend_matches_efficientat_and_numpy(reference, name, wave_key):
    mel = TorchLogMel()(reference[wave_key])
    assert np.abs(mel - reference[f"{name}_mel"]).max() < 1e-4
    assert np.abs(mel - log_mel(reference[wave_key])).max() < 1e-4


def test_batched_eval_is_deterministic(reference):
    module = MelSTFT().eval()
    x = torch.from_numpy(np.stack([reference["metro_wave_32k"][:64000], reference["sine_wave"]]))
    out = module(x)
    assert out.shape == (2, 128, 200)
    torch.testing.assert_close(out, module(x))
    np.testing.assert_allclose(out[1].numpy(), reference["sine_mel"], atol=1e-4)


def test_train_mode_masks_and_jitters(reference):
    torch.manual_seed(0)
    module = MelSTFT().train()
    x = torch.from_numpy(reference["metro_wave_32k"])[None].repeat(4, 1)
    out = module(x)
    eval_out = module.eval()(x)
    masked_value = (0.0 + 4.5) / 5  # masking zeroes the log-mel before normalisation, as EfficientAT does
    assert (out == masked_value).any()
    assert not torch.allclose(out, eval_out)
    assert not torch.equal(out[0], out[1])  # iid masks per example


def test_mask_widths_stay_below_the_maximum():
    torch.manual_seed(1)
    x = torch.ones(64, 128, 100)
    masked = mask_along_axis(x, 48, axis=1)
    widths = (masked[:, :, 0] == 0).sum(dim=1)
    assert widths.max() < 48 and widths.float().mean() > 10
    rows = (masked == 0).any(dim=2)  # masked mel bands are contiguous per example
    for r in rows:
        idx = torch.nonzero(r).flatten()
        if len(idx):
            assert idx[-1] - idx[0] + 1 == len(idx)


def test_bad_input_raises_the_runtime_error():
    with pytest.raises(AudioFormatError, match="too short"):
        TorchLogMel()(np.zeros(100, np.float32))
    with pytest.raises(ValueError, match="batch, n_samples"):
        MelSTFT()(torch.zeros(3, 1, 1000))
