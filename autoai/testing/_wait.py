"""The one bounded wait of tests, benchmarks and scripts: poll a condition, never sleep for an
assumed speed."""

from __future__ import annotations

import time
from collections.abc import Callable

from config_store import StoreUnavailable

__all__ = ["WaitTimeout", "wait"]


class WaitTimeout(AssertionError, TimeoutError):
    """A bounded wait ran out: a failed assertion in a test, a ``TimeoutError`` elsewhere."""


def wait(done: Callable[[], bool], timeout: float, what: str, step: float = 0.1) -> float:
    """Poll ``done`` until true; returns the seconds it took.

    A store that is unreachable for a moment (``StoreUnavailable`` from ``done``) is "not yet",
    like any other false answer: the condition is what is waited for, not a connection. The
    last such error is named if the wait times out.

    Raises:
        WaitTimeout: ``done`` was still false after ``timeout`` seconds.
    """
    started = time.monotonic()
    unavailable: StoreUnavailable | None = None
    while True:
        try:
            if done():
                return time.monotonic() - started
        except StoreUnavailable as exc:
            unavailable = exc
        if time.monotonic() - started > timeout:
            also = f" (the store last said: {unavailable})" if unavailable else ""
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}{also}")
        time.sleep(step)
