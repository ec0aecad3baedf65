"""Learning-rate and dynamic-conv temperature schedules, as functions of the (fractional) epoch.

EfficientAT's learning-rate schedule: an exponential warm-up (Laine & Aila's ramp-up,
exp(-5 (1 - e/warmup)^2)), a constant phase, a linear ramp-down, then a constant fine-tuning
tail at ``last_value`` x the peak. Its defaults are for 200 epochs (warm-up 8, ramp-down from
80 over 95); ``for_epochs`` scales them to a shorter run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["LRSchedule", "temperature_epoch"]


@dataclass(frozen=True)
class LRSchedule:
    warmup: float = 8
    rampdown_start: float = 80
    rampdown_len: float = 95
    last_value: float = 0.01

    @classmethod
    def for_epochs(cls, epochs: int, last_value: float = 0.01) -> "LRSchedule":
        """EfficientAT's 200-epoch proportions applied to ``epochs``."""
        scale = epochs / 200
        return cls(max(1.0, 8 * scale), 80 * scale, 95 * scale, last_value)

    def __call__(self, epoch: float) -> float:
        if epoch < self.warmup:
            e = min(max(epoch, 0.5), self.warmup)
            ramp_up = math.exp(-5.0 * (1.0 - e / self.warmup) ** 2)
        else:
            ramp_up = 1.0
        if epoch <= self.rampdown_start:
            down = 1.0
        elif epoch - self.rampdown_start < self.rampdown_len:
            down = self.last_value + (1 - self.last_value) * (self.rampdown_len - epoch + self.rampdown_start) / self.rampdown_len
        else:
            down = self.last_value
        return ramp_up * down


def temperature_epoch(epoch: float, span: float, schedule_span: float = 30.0) -> float:
    """Map training progress onto the dynamic-conv temperature schedule.

    EfficientAT anneals the attention temperature from 30 to 1 over about 30 epochs of AudioSet.
    A short run compresses that into ``span`` epochs, so it still ends at temperature 1, the
    value the exported model runs at.
    """
    return epoch * schedule_span / span if span > 0 else schedule_span
