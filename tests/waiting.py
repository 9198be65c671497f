"""The one polling helper of the test suite: wait for a condition, with a deadline."""

from __future__ import annotations

import time
from typing import Any, Callable


def wait_until(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; return that.

    For states no event announces (a count in another process, a file
    being written). Fails the test with ``what`` when ``timeout`` seconds
    pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:g}s")
        time.sleep(0.01)  # polling a condition with a deadline, not standing in for an event
