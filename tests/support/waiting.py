"""Waiting on a condition that another thread (a server, an engine loop) makes true, bounded in time."""

import time
from collections.abc import Callable


def wait_until(cond: Callable[[], object], timeout: float = 15.0, interval: float = 0.01) -> bool:
    """Poll `cond` until it holds or `timeout` seconds pass; its last value, as a bool."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return bool(cond())
