"""The numpy log-mel frontend against EfficientAT's own outputs (frontend_reference.npz)."""

import numpy as np
import pytest

from dymn_edge.runtime.errors import AudioFormatError
from dymn_edge.runtime.frontend import FrontendConfig, LogMel, kaldi_mel_banks, log_mel, n_frames
from dymn_edge.runtime.frontend import _BLOCK_FRAMES, _padded_window, frame_log_mel, preemphasized_padded, stft_segments


@pytest.fixture(scope="module")
def reference(fixtures_dir):
    return np.load(fixtures_dir / "frontend_reference.npz")


def test_filterbank_matches_kaldi_banks(reference):
    banks = kaldi_mel_banks()
    assert banks.shape == (128, 513)
    assert np.all(banks[:, -1] == 0)  # Nyquist column padded with zeros
    np.testing.assert_allclose(banks, reference["mel_basis"], atol=2e-5)


def test_window_is_symmetric_hann_centred_in_fft(reference):
    window = _padded_window(800, 1024)
    assert np.all(window[:112] == 0) and np.all(window[912:] == 0)
    np.testing.assert_allclose(window[112:912], reference["window"], atol=1e-6)


@pytest.mark.parametrize("name, wave_key", [("metro", "metro_wave_32k"), ("sine", "sine_wave"), ("silence", "silence_wave")])
def test_log_mel_matches_efficientat(reference, name, wave_key):
    mel = log_mel(reference[wave_key])
    expected = reference[f"{name}_mel"]
    assert mel.shape == expected.shape and mel.dtype == np.float32
    assert np.abs(mel - expected).max() < 1e-4  # the issue asks 1e-3; float64 vs float32 torch differ by ~2e-5


def test_silence_is_the_documented_constant(reference):
    mel = log_mel(np.zeros(16000, dtype=np.float32))
    np.testing.assert_allclose(mel, (np.log(1e-5) + 4.5) / 5, atol=1e-6)


@pytest.mark.parametrize("n_samples", [800, 801, 1119, 1120, 320000, 320001])
def test_frame_count(n_samples, rng):
    mel = log_mel(rng.standard_normal(n_samples).astype(np.float32) * 0.1)
    assert mel.shape == (128, n_frames(n_samples)) == (128, 1 + (n_samples - 1) // 320)


@pytest.mark.parametrize("n_samples", [800, 1025, 1026, 1600, 20480, 20481, 20800, 21184, 21504, 41280, 320000, 320001, 1_000_003])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_block_wise_log_mel_equals_the_whole_clip_computation(n_samples, dtype, rng):
    """log_mel pads and transforms one block of frames at a time (memory); every value must be the
    one the whole padded clip gives, including the reflected frames at both ends and clips that end
    just before, on and after a block boundary (64 frames = 20480 samples)."""
    assert _BLOCK_FRAMES == 64
    x = (rng.standard_normal(n_samples) * 0.3).astype(dtype)
    whole = frame_log_mel(stft_segments(preemphasized_padded(x), n_frames(n_samples)), FrontendConfig()).T
    assert np.array_equal(log_mel(x), whole)


def test_ten_seconds_give_1000_frames():
    assert n_frames(320000) == 1000


@pytest.mark.parametrize(
    "wave, message",
    [
        (np.zeros(799, np.float32), "too short: 799 samples; need at least 800"),
        (np.zeros((2, 4000), np.float32), "expected a mono waveform"),
        (np.array([0.0] * 999 + [np.nan], np.float32), "1 NaN/inf samples"),
        (np.array([np.inf] * 1000, np.float32), "1000 NaN/inf samples"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(wave, message):
    with pytest.raises(AudioFormatError, match=message):
        log_mel(wave)


def test_config_round_trip_and_validation():
    config = FrontendConfig()
    assert FrontendConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown frontend parameters"):
        FrontendConfig.from_dict({**config.to_dict(), "n_mel": 64})
    with pytest.raises(ValueError, match="f_max_hz"):
        FrontendConfig(f_max_hz=20000.0)


def test_callable_frontend_uses_its_config():
    config = FrontendConfig(n_mels=64)
    assert LogMel(config)(np.zeros(3200, np.float32)).shape == (64, 10)
