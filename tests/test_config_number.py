"""config.number: the one parser of numeric I2X_* settings, its bounds and its message."""

from __future__ import annotations

import pytest

from i2x import config
from i2x.core.errors import InvalidArgument


def test_numbers_within_the_bounds_are_read():
    assert config.number("I2X_RAY_IDLE_SECONDS", "0", unit="seconds") == 0.0
    assert config.number("I2X_RAY_RECONNECT_SECONDS", "3600", low=0.5, high=3600) == 3600.0
    assert config.number("I2X_RAY_CPUS_PER_TASK", "0.25", low_open=True) == 0.25


@pytest.mark.parametrize("text, kwargs, message", [
    ("-1", {"unit": "seconds", "zero_means": "0: no limit"}, "must be a number of seconds >= 0 (0: no limit), got '-1'"),
    ("0", {"low_open": True}, "must be a number > 0, got '0'"),
    ("0.4", {"low": 0.5, "high": 3600, "unit": "seconds"}, "must be a number of seconds in 0.5..3600, got '0.4'"),
    ("nan", {}, "must be a number >= 0, got 'nan'"),
    ("inf", {}, "must be a number >= 0, got 'inf'"),
    ("ten", {}, "must be a number >= 0, got 'ten'"),
])
def test_a_bad_value_names_the_setting_and_the_bounds(text, kwargs, message):
    with pytest.raises(InvalidArgument) as info:
        config.number("I2X_RAY_WAIT_SECONDS", text, **kwargs)
    assert info.value.field == "I2X_RAY_WAIT_SECONDS" and info.value.message == message
