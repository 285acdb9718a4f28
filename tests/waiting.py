"""until(): poll a condition in a test, failing with what was awaited (tests import it by name)."""

from __future__ import annotations

import time


def until(predicate, timeout: float, what: str, interval: float = 0.1):
    """predicate()'s first truthy value within `timeout` s, else AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"not within {timeout} s: {what}")
