"""Audio input: decode with soundfile, mix down to mono, resample to 32 kHz with soxr.

Any container/codec libsndfile reads (WAV, FLAC, OGG/Vorbis, MP3 with libsndfile >= 1.1)
and any integer or float sample format; integers are scaled to [-1, 1) by soundfile.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .errors import AudioFormatError
from .frontend import SAMPLE_RATE

__all__ = ["AUDIO_SUFFIXES", "audio_files_in", "check_finite", "decode_audio", "load_audio", "resample", "seconds_to_samples", "to_mono"]

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au")  # what a folder of audio is taken to hold
RESAMPLE_QUALITY = "HQ"  # soxr's high quality: what librosa.load(sr=...) uses, so EfficientAT's own pipeline


def seconds_to_samples(seconds: float, sample_rate_hz: int = SAMPLE_RATE) -> int:
    """Samples in ``seconds`` of audio, rounded to the nearest: every window and hop goes through here.

    ``int()`` truncates the float product: 2.01 s at 32 kHz is 64319.99... and became 64319 samples
    in file tagging but 64320 in the live stream, so the two saw different windows.
    """
    return round(seconds * sample_rate_hz)


def audio_files_in(folder: Path) -> list[Path]:
    """Every audio file below ``folder`` (by suffix), sorted, so runs over a folder are repeatable."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def to_mono(audio: np.ndarray) -> np.ndarray:
    """Mix (n_samples, n_channels) down to (n_samples,) by averaging channels."""
    audio = np.asarray(audio)
    if audio.ndim == 1:
        return audio
    if audio.ndim != 2:
        raise AudioFormatError(f"expected audio of shape (n_samples,) or (n_samples, channels), got {audio.shape}")
    return audio.mean(axis=1, dtype=np.float64).astype(audio.dtype, copy=False)


def resample(audio: np.ndarray, rate_in: int, rate_out: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling with soxr (HQ); returns the input unchanged when the rates agree."""
    if rate_in <= 0:
        raise AudioFormatError(f"sample rate must be positive, got {rate_in} Hz")
    if rate_in == rate_out:
        return audio
    return soxr.resample(audio, rate_in, rate_out, quality=RESAMPLE_QUALITY)


def check_finite(audio: np.ndarray, source: str) -> None:
    """Refuse NaN/inf samples: they would poison every frame they touch without any visible error."""
    finite = np.isfinite(audio)
    if not finite.all():
        bad = int(audio.size - np.count_nonzero(finite))
        raise AudioFormatError(f"{source}: {bad} of {audio.size} samples are NaN or infinite; expected finite samples")


def load_audio(path: str | Path, sample_rate_hz: int = SAMPLE_RATE) -> np.ndarray:
    """Read an audio file as mono float32 at ``sample_rate_hz``.

    Args:
        path: any file libsndfile decodes.
        sample_rate_hz: target rate; the file is resampled with soxr when it differs.

    Returns:
        (n_samples,) float32.

    Raises:
        FileNotFoundError: the path does not exist.
        AudioFormatError: undecodable, empty, or non-finite audio.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such audio file")
    if path.is_dir():
        raise AudioFormatError(f"{path}: is a directory; expected an audio file (WAV, FLAC, OGG, ...)")
    return _decode(str(path), str(path), sample_rate_hz)


def decode_audio(data: bytes, source: str, sample_rate_hz: int = SAMPLE_RATE) -> np.ndarray:
    """Decode an encoded file held in memory (the MP3 bytes of an AudioSet HDF5 file, say) like ``load_audio``."""
    return _decode(io.BytesIO(data), source, sample_rate_hz)


def _decode(file, source: str, sample_rate_hz: int) -> np.ndarray:
    try:
        audio, rate = sf.read(file, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioFormatError(
            f"{source}: cannot decode audio ({e}); expected a file libsndfile reads (WAV, FLAC, OGG, MP3)"
        ) from e
    if audio.shape[0] == 0:
        raise AudioFormatError(f"{source}: contains no audio samples")
    check_finite(audio, source)
    mono = to_mono(audio)
    logger.debug("%s: %d Hz, %d channel(s), %.3f s", source, rate, audio.shape[1], audio.shape[0] / rate)
    return np.ascontiguousarray(resample(mono, rate, sample_rate_hz), dtype=np.float32)
