"""EfficientAT's log-mel frontend in numpy: the reference every other frontend is tested against.

Pipeline (EfficientAT ``models/preprocess.py``, ``AugmentMelSTFT`` in eval mode):
pre-emphasis ``y[n] = x[n+1] - 0.97 x[n]`` (one sample shorter), centred STFT with reflect
padding, symmetric Hann window of 800 samples zero-padded to 1024, power spectrum, Kaldi-style
mel filterbank (linear in mel, 0-15 kHz, no area normalisation), ``ln(x + 1e-5)`` and the
"fast normalisation" ``(x + 4.5) / 5``.

The filterbank is computed from the Kaldi formula here rather than taken from torchaudio
(unavailable on our targets) or librosa (a heavy dependency for 20 lines of arithmetic).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import lru_cache

import numpy as np

from .errors import AudioFormatError

__all__ = [
    "SAMPLE_RATE",
    "N_FFT",
    "WIN_LENGTH",
    "HOP_LENGTH",
    "N_MELS",
    "FrontendConfig",
    "LogMel",
    "frame_log_mel",
    "kaldi_mel_banks",
    "log_mel",
    "n_frames",
    "preemphasis",
    "preemphasized_padded",
    "stft_segments",
]

SAMPLE_RATE = 32000  # Hz: every EfficientAT model is trained at 32 kHz
N_FFT = 1024  # samples: FFT size (32 ms)
WIN_LENGTH = 800  # samples: analysis window (25 ms), zero-padded to N_FFT
HOP_LENGTH = 320  # samples: 10 ms per frame, so 10 s -> 1000 frames
N_MELS = 128  # mel bands
F_MIN = 0.0  # Hz
F_MAX = SAMPLE_RATE // 2 - 2000 // 2  # Hz: 15 kHz, EfficientAT's default (fmax_aug_range 2000)
PREEMPHASIS = 0.97
LOG_OFFSET = 1e-5
NORM_SHIFT = 4.5  # (log-mel + 4.5) / 5: EfficientAT's "fast normalisation"
NORM_SCALE = 5.0


@dataclass(frozen=True)
class FrontendConfig:
    """Parameters of the log-mel frontend; stored in every bundle manifest."""

    sample_rate_hz: int = SAMPLE_RATE
    n_fft: int = N_FFT
    win_length: int = WIN_LENGTH
    hop_length: int = HOP_LENGTH
    n_mels: int = N_MELS
    f_min_hz: float = F_MIN
    f_max_hz: float = float(F_MAX)
    preemphasis: float = PREEMPHASIS
    log_offset: float = LOG_OFFSET
    norm_shift: float = NORM_SHIFT
    norm_scale: float = NORM_SCALE

    def __post_init__(self) -> None:
        if not 0 < self.win_length <= self.n_fft:
            raise ValueError(f"win_length must be in (0, n_fft={self.n_fft}], got {self.win_length}")
        if not 0 <= self.f_min_hz < self.f_max_hz <= self.sample_rate_hz / 2:
            raise ValueError(
                f"need 0 <= f_min_hz < f_max_hz <= {self.sample_rate_hz / 2}, "
                f"got f_min_hz={self.f_min_hz}, f_max_hz={self.f_max_hz}"
            )

    @property
    def min_samples(self) -> int:
        """Shortest input the frontend accepts: one analysis window."""
        return self.win_length

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FrontendConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown frontend parameters {sorted(unknown)}; expected a subset of {sorted(known)}")
        return cls(**d)


def _mel(freq_hz: np.ndarray | float) -> np.ndarray:
    """Kaldi's mel scale: 1127 ln(1 + f/700)."""
    return 1127.0 * np.log1p(np.asarray(freq_hz, dtype=np.float64) / 700.0)


@lru_cache(maxsize=16)
def kaldi_mel_banks(
    n_mels: int = N_MELS,
    n_fft: int = N_FFT,
    sample_rate_hz: int = SAMPLE_RATE,
    f_min_hz: float = F_MIN,
    f_max_hz: float = float(F_MAX),
) -> np.ndarray:
    """Kaldi mel filterbank with a zero Nyquist column, as EfficientAT builds it.

    Triangles are linear in mel with peak 1; FFT bin i sits at i * sr / n_fft for
    i < n_fft / 2 and the Nyquist bin gets weight 0 (torchaudio's ``get_mel_banks`` + pad).

    Returns:
        (n_mels, n_fft // 2 + 1) float64, read-only.
    """
    n_bins = n_fft // 2
    mel_lo, mel_hi = _mel(f_min_hz), _mel(f_max_hz)
    delta = (mel_hi - mel_lo) / (n_mels + 1)
    edges = mel_lo + delta * np.arange(n_mels + 2, dtype=np.float64)
    left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    mel_bins = _mel(sample_rate_hz / n_fft * np.arange(n_bins, dtype=np.float64))[None, :]
    up = (mel_bins - left) / (center - left)
    down = (right - mel_bins) / (right - center)
    banks = np.maximum(0.0, np.minimum(up, down))
    banks = np.concatenate([banks, np.zeros((n_mels, 1))], axis=1)
    banks.setflags(write=False)
    return banks


@lru_cache(maxsize=16)
def _sparse_banks(config: "FrontendConfig"):
    """The filterbank as (columns, weights, band starts) over its nonzero bins, or None if a band is empty.

    Each triangle covers a few contiguous bins (947 nonzeros of 128 x 513), so gathering those
    bins and summing per band does the dense product's work at a third of its cost; the results
    agree to 4e-16 relative (summation order).
    """
    banks = kaldi_mel_banks(config.n_mels, config.n_fft, config.sample_rate_hz, config.f_min_hz, config.f_max_hz)
    nonzero = [np.flatnonzero(row) for row in banks]
    if any(len(z) == 0 for z in nonzero):
        return None
    columns = np.concatenate(nonzero)
    weights = np.concatenate([banks[i, z] for i, z in enumerate(nonzero)])
    starts = np.cumsum([0] + [len(z) for z in nonzero[:-1]])
    return columns, weights, starts


@lru_cache(maxsize=16)
def _padded_window(win_length: int, n_fft: int) -> np.ndarray:
    """Symmetric Hann window (torch ``periodic=False``) centred in n_fft zeros, as torch.stft pads it."""
    n = np.arange(win_length, dtype=np.float64)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / (win_length - 1))
    left = (n_fft - win_length) // 2
    padded = np.zeros(n_fft, dtype=np.float64)
    padded[left : left + win_length] = window
    padded.setflags(write=False)
    return padded


def n_frames(n_samples: int, config: FrontendConfig = FrontendConfig()) -> int:
    """Frames the frontend yields for ``n_samples`` of audio: 1 + (n - 1) // hop (pre-emphasis eats one)."""
    return 1 + (n_samples - 1) // config.hop_length


# Frames per STFT block. A whole-clip STFT in float64 held ~20 MB of temporaries for a 10 s clip.
# ``log_mel`` pre-emphasises, pads and transforms one block at a time, so a 10 s clip peaks at
# ~2.5 MB of temporaries beside its output (tracemalloc; 10.4 MB with whole-clip padding and
# 256-frame blocks), whatever its length. Each frame's values are the same at any block size.
_BLOCK_FRAMES = 64


def preemphasis(x: np.ndarray, config: FrontendConfig = FrontendConfig(), out: np.ndarray | None = None) -> np.ndarray:
    """y[n] = x[n+1] - a x[n] in float64, into ``out`` when given; bit-identical to
    ``x64[1:] - a * x64[:-1]`` without making a float64 copy of ``x`` first."""
    y = np.empty(x.shape[0] - 1, dtype=np.float64) if out is None else out
    np.multiply(x[:-1], -config.preemphasis, out=y, dtype=np.float64)
    y += x[1:]
    return y


def preemphasized_padded(x: np.ndarray, config: FrontendConfig = FrontendConfig()) -> np.ndarray:
    """Pre-emphasis y[n] = x[n+1] - a x[n] in float64, reflect-padded by n_fft/2 on both sides.

    Written into one buffer (no float64 copy of the input, no separate padded copy); the values
    are bit-identical to ``np.pad(x[1:] - a * x[:-1], n_fft // 2, mode="reflect")``.
    """
    pad, n = config.n_fft // 2, x.shape[0] - 1
    if n <= pad:  # too short for the in-place reflection: the plain way (tiny arrays)
        x64 = x.astype(np.float64)
        return np.pad(x64[1:] - config.preemphasis * x64[:-1], pad, mode="reflect")
    padded = np.empty(n + 2 * pad, dtype=np.float64)
    y = preemphasis(x, config, out=padded[pad : pad + n])
    padded[:pad] = y[pad:0:-1]
    padded[pad + n :] = y[-2 : -pad - 2 : -1]
    return padded


def frame_log_mel(segments: np.ndarray, config: FrontendConfig = FrontendConfig()) -> np.ndarray:
    """Normalised log-mel of STFT segments: (n, n_fft) rows of the padded pre-emphasised signal -> (n, n_mels) float32.

    The per-frame core of ``log_mel``, shared with the streaming frontend so both compute every
    frame the same way.
    """
    sparse = _sparse_banks(config)
    window = _padded_window(config.win_length, config.n_fft)
    mel = np.empty((segments.shape[0], config.n_mels), dtype=np.float64)
    for start in range(0, segments.shape[0], _BLOCK_FRAMES):
        spec = np.fft.rfft(segments[start : start + _BLOCK_FRAMES] * window, axis=-1)
        power = spec.real**2 + spec.imag**2
        if sparse is None:
            banks = kaldi_mel_banks(config.n_mels, config.n_fft, config.sample_rate_hz, config.f_min_hz, config.f_max_hz)
            mel[start : start + _BLOCK_FRAMES] = power @ banks.T
        else:
            columns, weights, starts = sparse
            mel[start : start + _BLOCK_FRAMES] = np.add.reduceat(power[:, columns] * weights, starts, axis=1)
    return ((np.log(mel + config.log_offset) + config.norm_shift) / config.norm_scale).astype(np.float32)


def stft_segments(padded: np.ndarray, count: int, config: FrontendConfig = FrontendConfig()) -> np.ndarray:
    """The first ``count`` frames of a padded signal as a strided (count, n_fft) view (no copy)."""
    return np.lib.stride_tricks.sliding_window_view(padded, config.n_fft)[:: config.hop_length][:count]


def log_mel(wave: np.ndarray, config: FrontendConfig = FrontendConfig()) -> np.ndarray:
    """Log-mel features of a mono waveform at ``config.sample_rate_hz``.

    Args:
        wave: (n_samples,) float array, nominally in [-1, 1]. At least one window
            (``config.win_length`` samples, 25 ms at 32 kHz) long and finite.
        config: frontend parameters.

    Returns:
        (n_mels, n_frames) float32 with n_frames = 1 + (n_samples - 1) // hop.
        Digital silence gives the constant (ln(1e-5) + 4.5) / 5.

    Raises:
        AudioFormatError: input that is not 1-D, too short, or holds NaN/inf.
    """
    x = np.asarray(wave)
    if x.ndim != 1:
        raise AudioFormatError(f"expected a mono waveform of shape (n_samples,), got shape {x.shape}")
    if x.shape[0] < config.min_samples:
        raise AudioFormatError(
            f"audio too short: {x.shape[0]} samples; need at least {config.min_samples} "
            f"({1000 * config.min_samples / config.sample_rate_hz:.0f} ms at {config.sample_rate_hz} Hz)"
        )
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    if not np.isfinite(x).all():
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise AudioFormatError(f"waveform holds {bad} NaN/inf samples of {x.shape[0]}; expected finite values")
    count = n_frames(x.shape[0], config)
    if x.shape[0] - 1 <= config.n_fft // 2:  # shorter than the padding: the reflection needs the whole clip
        return np.ascontiguousarray(frame_log_mel(stft_segments(preemphasized_padded(x, config), count, config), config).T)
    out = np.empty((config.n_mels, count), dtype=np.float32)
    for start in range(0, count, _BLOCK_FRAMES):
        stop = min(start + _BLOCK_FRAMES, count)
        span = _preemphasized_padded_span(x, start * config.hop_length, (stop - 1) * config.hop_length + config.n_fft, config)
        out[:, start:stop] = frame_log_mel(stft_segments(span, stop - start, config), config).T
    return out


def _preemphasized_padded_span(x: np.ndarray, lo: int, hi: int, config: FrontendConfig) -> np.ndarray:
    """Samples [lo, hi) of ``preemphasized_padded(x)``, bit-identical, without building the whole padded clip.

    Padded index p holds pre-emphasised sample i = p - n_fft/2, reflected at both ends of the
    n = len(x) - 1 samples (i -> -i below 0, i -> 2(n - 1) - i from n on; needs n > n_fft/2).
    """
    n = x.shape[0] - 1
    i = np.arange(lo - config.n_fft // 2, hi - config.n_fft // 2)
    if i[0] >= 0 and i[-1] < n:  # an interior block: a plain slice
        return preemphasis(x[i[0] : i[-1] + 2], config)
    i = np.where(i < 0, -i, i)
    i = np.where(i >= n, 2 * (n - 1) - i, i)
    first = int(i.min())
    return preemphasis(x[first : int(i.max()) + 2], config)[i - first]


class LogMel:
    """Callable numpy frontend: waveform (n,) -> features (n_mels, frames) float32."""

    name = "numpy"

    def __init__(self, config: FrontendConfig = FrontendConfig()) -> None:
        self.config = config

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        return log_mel(wave, self.config)
