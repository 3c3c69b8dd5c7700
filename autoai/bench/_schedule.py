"""The open loop's arrival schedule: a Poisson process of intended send times (pure).

The generator asks ``due(now)`` for every arrival whose intended time has come, sends them at
once, and sleeps until ``next_at``. When it is late (a busy event loop, a full in-flight
limit), ``due`` hands over every arrival it missed with its *original* intended time: the calls
still go out, and their latency is counted from when they should have been sent.
"""

from __future__ import annotations

import math
import random

__all__ = ["ArrivalPlan"]


class ArrivalPlan:
    """Intended send times of a Poisson process of ``rate`` arrivals per second from ``start``.

    Args:
        rate: mean arrivals per second (> 0).
        start: the time the process starts, on the generator's clock.
        rng: the source of the exponential gaps (seed it for a repeatable schedule).

    Raises:
        ValueError: ``rate`` is not a finite number > 0.
    """

    __slots__ = ("_rate", "_rng", "next_at")

    def __init__(self, rate: float, start: float, rng: random.Random | None = None):
        if not (isinstance(rate, int | float) and math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate must be a finite number > 0, got {rate!r}")
        self._rate = float(rate)
        self._rng = rng or random.Random()
        self.next_at = start + self._rng.expovariate(self._rate)
        """The intended time of the next arrival not yet handed out."""

    def due(self, now: float) -> list[float]:
        """The intended times ``<= now`` not handed out yet, oldest first (often none)."""
        if self.next_at > now:
            return []
        out: list[float] = []
        at, gap, rate = self.next_at, self._rng.expovariate, self._rate
        while at <= now:
            out.append(at)
            at += gap(rate)
        self.next_at = at
        return out
