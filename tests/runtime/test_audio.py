"""Audio input: every sample format soundfile writes, mono mix-down, soxr resampling, bad files."""

import numpy as np
import pytest
import soundfile as sf

from dymn_edge.runtime.audio import load_audio, resample, to_mono
from dymn_edge.runtime.errors import AudioFormatError


def _tone(freq_hz, sr, seconds, amplitude=0.5):
    t = np.arange(int(sr * seconds)) / sr
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def _peak_frequency(x, sr):
    """Peak of a zero-padded, Hann-windowed spectrum, refined by parabolic interpolation."""
    n = 1 << 21
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), n))
    k = int(np.argmax(spec))
    a, b, c = np.log(spec[k - 1 : k + 2])
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * sr / n


def test_pure_tone_keeps_frequency_and_level_through_44k1_to_32k():
    x = _tone(1000.0, 44100, 2.0)
    y = resample(x, 44100, 32000)
    assert len(y) == 64000
    core = y[3200:-3200]  # away from the filter's edge transients
    assert abs(_peak_frequency(core, 32000) - 1000.0) < 0.05
    level_db = 20 * np.log10(np.sqrt(np.mean(core**2)) / (0.5 / np.sqrt(2)))
    assert abs(level_db) < 0.01


def test_tone_near_new_nyquist_is_removed_not_aliased():
    y = resample(_tone(17000.0, 44100, 1.0), 44100, 32000)  # above 16 kHz: must be filtered out
    assert np.sqrt(np.mean(y[3200:-3200] ** 2)) < 1e-3


@pytest.mark.parametrize(
    "fmt, subtype, atol",
    [
        ("WAV", "PCM_16", 1e-4),
        ("WAV", "PCM_24", 1e-6),
        ("WAV", "PCM_32", 1e-6),
        ("WAV", "FLOAT", 1e-6),
        ("WAV", "DOUBLE", 1e-6),
        ("WAV", "PCM_U8", 1e-2),
        ("FLAC", "PCM_16", 1e-4),
        ("FLAC", "PCM_24", 1e-6),
    ],
)
def test_any_sample_format_decodes_to_the_same_signal(tmp_path, fmt, subtype, atol):
    x = _tone(440.0, 44100, 0.5, amplitude=0.4)
    path = tmp_path / f"tone.{fmt.lower()}"
    sf.write(path, x, 44100, subtype=subtype, format=fmt)
    y = load_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1 and len(y) == 16000
    np.testing.assert_allclose(y, resample(x, 44100, 32000), atol=atol * 4)


def test_ogg_vorbis_decodes(tmp_path):
    x = _tone(440.0, 48000, 1.0, amplitude=0.4)
    path = tmp_path / "tone.ogg"
    sf.write(path, x, 48000, format="OGG", subtype="VORBIS")
    y = load_audio(path)
    ref = resample(x, 48000, 32000)
    assert len(y) == len(ref)
    assert np.corrcoef(y[1000:-1000], ref[1000:-1000])[0, 1] > 0.99  # lossy codec


def test_stereo_is_mixed_down_to_the_channel_mean(tmp_path):
    left, right = _tone(440.0, 32000, 0.5, 0.4), _tone(880.0, 32000, 0.5, 0.2)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 32000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), (left + right) / 2, atol=1e-7)
    assert to_mono(np.stack([left, -left], axis=1)).max() == 0


def test_32k_input_is_passed_through_untouched(tmp_path):
    x = _tone(440.0, 32000, 0.25)
    path = tmp_path / "x.wav"
    sf.write(path, x, 32000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path), x)


def test_unreadable_file_names_the_file(tmp_path):
    path = tmp_path / "noise.wav"
    path.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(AudioFormatError, match=r"noise\.wav: cannot decode audio"):
        load_audio(path)


def test_empty_file_and_empty_audio(tmp_path):
    (tmp_path / "empty.flac").write_bytes(b"")
    with pytest.raises(AudioFormatError, match="empty.flac"):
        load_audio(tmp_path / "empty.flac")
    sf.write(tmp_path / "zero.wav", np.zeros(0, np.float32), 32000)
    with pytest.raises(AudioFormatError, match="contains no audio samples"):
        load_audio(tmp_path / "zero.wav")


def test_nan_and_inf_samples_are_refused(tmp_path):
    x = _tone(440.0, 32000, 0.2)
    x[100], x[200] = np.nan, np.inf
    sf.write(tmp_path / "nan.wav", x, 32000, subtype="FLOAT")
    with pytest.raises(AudioFormatError, match="nan.wav: 2 of 6400 samples are NaN or infinite"):
        load_audio(tmp_path / "nan.wav")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(AudioFormatError, match="is a directory"):
        load_audio(tmp_path)


def test_bad_sample_rate():
    with pytest.raises(AudioFormatError, match="sample rate must be positive"):
        resample(np.zeros(10, np.float32), 0)


def test_real_esc50_clip_loads_at_32k(shared):
    path = next(iter(sorted((shared / "data" / "esc50" / "audio").glob("*.flac"))))
    y = load_audio(path)
    assert len(y) == 160000 and np.isfinite(y).all() and np.abs(y).max() <= 1.0
