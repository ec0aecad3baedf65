"""EfficientAT's log-mel frontend in torch, for training and the torch inference path.

Eval mode computes exactly what ``dymn_edge.runtime.frontend.log_mel`` computes (tested to
1e-3 against the fixtures and against the numpy reference). Train mode adds EfficientAT's
augmentations: a jittered mel range (fmin + U[0, 10) Hz, fmax +- 1 kHz) and iid frequency
and time masking (48 bands, 192 frames), written here because torchaudio is unavailable.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dymn_edge.runtime.frontend import FrontendConfig, kaldi_mel_banks

__all__ = ["MelSTFT", "TorchLogMel", "mask_along_axis"]


def mask_along_axis(x: torch.Tensor, max_width: int, axis: int) -> torch.Tensor:
    """Zero one random band per example: width ~ U[0, max_width), start ~ U[0, size - width).

    Matches torchaudio's FrequencyMasking/TimeMasking with ``iid_masks=True`` (masked value 0).
    x is (B, n_mels, frames); axis 1 masks mel bands, axis 2 masks frames.
    """
    if max_width <= 0:
        return x
    b, size = x.shape[0], x.shape[axis]
    width = torch.rand(b, device=x.device) * max_width
    start = torch.rand(b, device=x.device) * (size - width)
    idx = torch.arange(size, device=x.device, dtype=torch.float32)
    mask = (idx[None, :] >= start[:, None].floor()) & (idx[None, :] < (start + width)[:, None].floor())
    shape = [b, 1, 1]
    shape[axis] = size
    return x.masked_fill(mask.view(shape), 0.0)


class MelSTFT(nn.Module):
    """Waveform (B, n_samples) at 32 kHz -> log-mel (B, n_mels, frames); ``forward(x).unsqueeze(1)`` feeds a model."""

    def __init__(
        self,
        config: FrontendConfig = FrontendConfig(),
        freqm: int = 48,
        timem: int = 192,
        fmin_aug_range: int = 10,
        fmax_aug_range: int = 2000,
    ) -> None:
        super().__init__()
        if fmin_aug_range < 1 or fmax_aug_range < 1:
            raise ValueError("fmin_aug_range and fmax_aug_range must be >= 1 (1 means no augmentation)")
        self.config = config
        self.freqm, self.timem = freqm, timem
        self.fmin_aug_range, self.fmax_aug_range = fmin_aug_range, fmax_aug_range
        window = torch.hann_window(config.win_length, periodic=False)
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("mel_basis", self._banks(config.f_min_hz, config.f_max_hz), persistent=False)

    def _banks(self, f_min: float, f_max: float) -> torch.Tensor:
        c = self.config
        return torch.from_numpy(np.asarray(kaldi_mel_banks(c.n_mels, c.n_fft, c.sample_rate_hz, f_min, f_max), dtype=np.float32))

    def power(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-emphasised STFT power, (B, n_fft/2+1, frames)."""
        c = self.config
        x = x[:, 1:] - c.preemphasis * x[:, :-1]
        spec = torch.stft(
            x, c.n_fft, hop_length=c.hop_length, win_length=c.win_length, window=self.window,
            center=True, pad_mode="reflect", normalized=False, return_complex=True,
        )
        return spec.real**2 + spec.imag**2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            raise ValueError(f"expected waveforms of shape (batch, n_samples), got {tuple(x.shape)}")
        if x.shape[1] < self.config.min_samples:
            raise ValueError(f"waveforms of {x.shape[1]} samples are shorter than one window ({self.config.min_samples})")
        power = self.power(x.float())
        basis = self.mel_basis
        if self.training:
            c = self.config
            f_min = c.f_min_hz + int(torch.randint(self.fmin_aug_range, (1,)))
            f_max = c.f_max_hz + self.fmax_aug_range // 2 - int(torch.randint(self.fmax_aug_range, (1,)))
            f_max = min(f_max, c.sample_rate_hz / 2)
            basis = self._banks(f_min, f_max).to(power.device)
        with torch.autocast(device_type=power.device.type, enabled=False):
            mel = torch.matmul(basis, power)
        mel = (mel + self.config.log_offset).log()
        if self.training:
            mel = mask_along_axis(mel, self.freqm, axis=1)
            mel = mask_along_axis(mel, self.timem, axis=2)
        return (mel + self.config.norm_shift) / self.config.norm_scale


class TorchLogMel:
    """numpy-in, numpy-out wrapper so the torch frontend plugs into the runtime's Tagger."""

    name = "torch"

    def __init__(self, config: FrontendConfig = FrontendConfig()) -> None:
        self.config = config
        self.module = MelSTFT(config).eval()

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        from dymn_edge.runtime.frontend import log_mel

        if wave.ndim != 1 or wave.shape[0] < self.config.min_samples or not np.isfinite(wave).all():
            log_mel(wave, self.config)  # raises the runtime's own AudioFormatError for bad input
        with torch.inference_mode():
            return self.module(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))[None])[0].numpy()
