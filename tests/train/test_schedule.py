"""Schedules: EfficientAT's learning-rate factor, and the temperature schedule compressed into short runs."""

from __future__ import annotations

import math

import pytest

from dymn_edge.train.layers.dynamic_conv import scheduled_temperature
from dymn_edge.train.schedule import LRSchedule, temperature_epoch


def test_learning_rate_factor_is_efficientats_exp_warmup_linear_down():
    f = LRSchedule(warmup=8, rampdown_start=80, rampdown_len=95, last_value=0.01)
    assert f(0) == pytest.approx(math.exp(-5 * (1 - 0.5 / 8) ** 2))  # epochs below 0.5 are clipped to 0.5
    assert f(4) == pytest.approx(math.exp(-5 * 0.5**2))
    assert f(8) == f(80) == 1.0
    assert f(127.5) == pytest.approx(0.01 + 0.99 * 47.5 / 95)
    assert f(175) == pytest.approx(0.01) and f(400) == pytest.approx(0.01)


def test_short_runs_scale_the_200_epoch_proportions():
    f = LRSchedule.for_epochs(40)
    assert (f.warmup, f.rampdown_start, f.rampdown_len) == pytest.approx((1.6, 16, 19))


def test_temperature_reaches_one_at_the_end_of_its_span():
    assert scheduled_temperature(temperature_epoch(0, 20)) == 30.0
    assert scheduled_temperature(temperature_epoch(10, 20)) == pytest.approx(15.0)
    assert scheduled_temperature(temperature_epoch(20, 20)) == 1.0
    assert scheduled_temperature(temperature_epoch(0, 0)) == 1.0  # span 0: a trained DyMN stays at 1
