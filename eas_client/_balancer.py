"""Instance selection, circuit breaking and the retry budget of the clients; pure and thread-safe.

No I/O and no HTTP library: discovery hands in :class:`Target` lists, a client asks for an
:class:`Endpoint`, reports how its request went, and asks the :class:`RetryBudget` before every
retry. Every time-dependent decision reads an injectable clock, so tests need no sleeps.

**Selection** is weighted power-of-two-choices on requests in flight ("outstanding"):

1. eligible: weight > 0, not tried yet in this call, not ejected;
2. draw a first candidate with probability weight / total weight, then a second one the same way
   among the others;
3. take the second only if it has strictly fewer requests in flight, else the first.

With equal loads every instance gets its weight's share (the first draw decides); an instance that
slows down or hangs piles up requests in flight and loses every comparison. Weight 0 means never.

**Circuit breaker**, per instance: after ``eject_after`` consecutive failures (transport errors and
503s) the instance is ejected for ``eject_for`` seconds. Back from ejection it is on probation: one
more failure ejects it again, for twice as long each time, up to ``max_eject_for``. Any success
closes the circuit. Failures of requests that were in flight when the instance got ejected do not
extend the ejection. When every instance is ejected, the one ejected longest ago is tried rather
than failing the call.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from config_store import Instance

__all__ = ["DEFAULT_WEIGHT", "Balancer", "Endpoint", "RetryBudget", "Target"]

Clock = Callable[[], float]
DEFAULT_WEIGHT: Final = 100
_NEVER: Final = -math.inf


@dataclass(frozen=True, slots=True)
class Target:
    """One instance as discovery reports it.

    Attributes:
        id: unique within the service (``host:port``); state is kept across updates by id.
        url: the instance's infer URL.
        origin: ``scheme://host:port``, the key of its connection pool.
        weight: its share of traffic (``payload["weight"]``, default 100); 0 = never chosen.
        instance: the registration it came from (for ``instances()``).
    """

    id: str
    url: str
    origin: str
    weight: int
    instance: Instance


class Endpoint:
    """A target plus its live state; handed out by :meth:`Balancer.pick`, read-only outside it.

    Attributes:
        target: what discovery said last about this instance.
        outstanding: requests in flight.
        failures: consecutive failures (reset by a success).
        ejections: ejections since the last success (sets the next ejection's length).
        ejected_at: clock time of the last ejection (``-inf``: never).
        ejected_until: clock time the current ejection ends (``-inf``: not ejected).
    """

    __slots__ = ("ejected_at", "ejected_until", "ejections", "failures", "outstanding", "target")

    def __init__(self, target: Target):
        self.target = target
        self.outstanding = 0
        self.failures = 0
        self.ejections = 0
        self.ejected_at = _NEVER
        self.ejected_until = _NEVER

    def __repr__(self) -> str:
        return (
            f"<Endpoint {self.target.id} weight={self.target.weight} "
            f"outstanding={self.outstanding} failures={self.failures}>"
        )


class Balancer:
    """The instance set of one service, and the choice of an instance per request.

    Args:
        eject_after: consecutive failures that eject an instance (at least 1).
        eject_for: first ejection's length, seconds; doubles on every repeat.
        max_eject_for: longest ejection, seconds (at least ``eject_for``).
        clock: monotonic seconds.
        rng: random source of the draws (seed one for reproducible tests).

    Raises:
        ValueError: an argument is out of range.
    """

    def __init__(
        self,
        *,
        eject_after: int = 3,
        eject_for: float = 5.0,
        max_eject_for: float = 60.0,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ):
        if isinstance(eject_after, bool) or not isinstance(eject_after, int) or eject_after < 1:
            raise ValueError(f"eject_after must be an integer >= 1, got {eject_after!r}")
        if not (isinstance(eject_for, int | float) and 0 < eject_for < math.inf):
            raise ValueError(f"eject_for must be a positive number of seconds, got {eject_for!r}")
        self._eject_after = eject_after
        self._eject_for = float(eject_for)
        self._max_eject_for = max(float(max_eject_for), self._eject_for)
        self._clock = clock
        self._random = (rng or random.Random()).random
        self._lock = threading.Lock()
        self._endpoints: tuple[Endpoint, ...] = ()
        self._generation = 0

    # --------------------------------------------------------------------------- instance set

    def update(self, targets: Iterable[Target]) -> list[Endpoint]:
        """Replace the instance set at once; instances that stay keep their state.

        Args:
            targets: the new set; on a repeated id the first entry wins.

        Returns:
            The endpoints that left the set (their requests in flight may still be releasing).
        """
        with self._lock:
            return self._replace(targets)

    def seed(self, targets: Iterable[Target]) -> bool:
        """Set the instance set only if no :meth:`update` came yet (a first read racing a watch).

        Returns:
            Whether the targets were taken (an update that came first is newer and wins).
        """
        with self._lock:
            if self._generation:
                return False
            self._replace(targets)
            return True

    def _replace(self, targets: Iterable[Target]) -> list[Endpoint]:
        old = {endpoint.target.id: endpoint for endpoint in self._endpoints}
        kept: dict[str, Endpoint] = {}
        for target in targets:
            if target.id in kept:
                continue
            endpoint = old.pop(target.id, None)
            if endpoint is None:
                endpoint = Endpoint(target)
            else:
                endpoint.target = target
            kept[target.id] = endpoint
        self._endpoints = tuple(kept.values())
        self._generation += 1
        return list(old.values())

    @property
    def generation(self) -> int:
        """How many times the set was replaced (0: discovery has not answered yet)."""
        return self._generation

    def endpoints(self) -> tuple[Endpoint, ...]:
        """The current set, in discovery order."""
        return self._endpoints

    # ------------------------------------------------------------------------------ selection

    def pick(self, exclude: Collection[str] = ()) -> Endpoint | None:
        """Choose an instance and count one more request in flight on it.

        Args:
            exclude: ids never to choose (the instances already tried in this call).

        Returns:
            The endpoint, to hand back to :meth:`release`; ``None`` when no instance with weight
            above 0 is left outside ``exclude``.
        """
        now = self._clock()
        with self._lock:
            eligible: list[Endpoint] = []
            total = 0
            fallback: Endpoint | None = None
            for endpoint in self._endpoints:
                target = endpoint.target
                if target.weight <= 0 or target.id in exclude:
                    continue
                if endpoint.ejected_until > now:
                    if fallback is None or endpoint.ejected_at < fallback.ejected_at:
                        fallback = endpoint
                    continue
                eligible.append(endpoint)
                total += target.weight
            if len(eligible) > 1:
                first = self._draw(eligible, total, None)
                second = self._draw(eligible, total - first.target.weight, first)
                chosen: Endpoint | None = (
                    second if second.outstanding < first.outstanding else first
                )
            else:
                chosen = eligible[0] if eligible else fallback
            if chosen is not None:
                chosen.outstanding += 1
            return chosen

    def _draw(self, eligible: Sequence[Endpoint], total: int, skip: Endpoint | None) -> Endpoint:
        point = self._random() * total
        last = eligible[0]
        for endpoint in eligible:
            if endpoint is skip:
                continue
            last = endpoint
            point -= endpoint.target.weight
            if point < 0:
                return endpoint
        return last  # float rounding at the very top of the range

    def release(self, endpoint: Endpoint, ok: bool | None) -> None:
        """Count a request on ``endpoint`` as finished, and feed its outcome to the breaker.

        Args:
            endpoint: what :meth:`pick` returned.
            ok: ``True`` the instance answered (any status but 503): closes its circuit;
                ``False`` transport error or 503: one more failure; ``None`` no verdict (the call
                was abandoned, or stopped before sending).
        """
        with self._lock:
            endpoint.outstanding -= 1
            if ok is None:
                return
            if ok:
                if endpoint.failures:
                    endpoint.failures = 0
                    endpoint.ejections = 0
                    endpoint.ejected_until = _NEVER
                return
            now = self._clock()
            if endpoint.ejected_until > now:
                return  # already out; in-flight failures do not extend the ejection
            endpoint.failures += 1
            # failures is not reset by an ejection: back from one, the next failure ejects again.
            if endpoint.failures >= self._eject_after:
                endpoint.ejections += 1
                length = self._eject_for * 2.0 ** min(endpoint.ejections - 1, 30)
                endpoint.ejected_at = now
                endpoint.ejected_until = now + min(length, self._max_eject_for)

    def is_ejected(self, endpoint: Endpoint) -> bool:
        """Whether ``endpoint`` is ejected now."""
        return endpoint.ejected_until > self._clock()

    def describe(self) -> str:
        """The state of the set in words, for error messages: ``"2 instances, 1 ejected"``."""
        endpoints = self._endpoints
        if not self._generation:
            return "discovery has not reported any instance yet"
        if not endpoints:
            return "no instance is registered"
        now = self._clock()
        zero = sum(1 for e in endpoints if e.target.weight <= 0)
        ejected = sum(1 for e in endpoints if e.target.weight > 0 and e.ejected_until > now)
        parts = [f"{len(endpoints)} instance{'s' if len(endpoints) != 1 else ''}"]
        if zero:
            parts.append(f"{zero} with weight 0")
        if ejected:
            parts.append(f"{ejected} ejected")
        return ", ".join(parts)


class _Slot:
    __slots__ = ("deposits", "tick", "withdrawals")

    def __init__(self) -> None:
        self.tick = -1
        self.deposits = 0
        self.withdrawals = 0


class RetryBudget:
    """A Finagle-style retry budget: retries may be at most ``ratio`` of calls, plus a floor.

    Every call deposits, every retry withdraws. Over the last ``ttl`` seconds, retries are allowed
    while ``withdrawals <= ratio * deposits + min_per_second * ttl``, so a failing service sees at
    most ``1 + ratio`` times its normal load plus the floor, never a retry storm; the floor lets
    a client with little traffic still retry. Share one budget between clients to bound them
    together. Thread-safe.

    Args:
        ratio: retries allowed per call (default 0.2: one retry for five calls).
        min_per_second: retries allowed per second whatever the traffic (default 10).
        ttl: the window over which calls and retries are counted, seconds (default 10).
        clock: monotonic seconds (injectable for tests).

    Raises:
        ValueError: a negative ratio or floor, or a window that is not a positive duration.
    """

    _SLOTS: Final = 10

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        min_per_second: float = 10.0,
        ttl: float = 10.0,
        clock: Clock = time.monotonic,
    ):
        if not (isinstance(ratio, int | float) and 0 <= ratio < math.inf):
            raise ValueError(f"ratio must be a number >= 0, got {ratio!r}")
        if not (isinstance(min_per_second, int | float) and 0 <= min_per_second < math.inf):
            raise ValueError(f"min_per_second must be a number >= 0, got {min_per_second!r}")
        if not (isinstance(ttl, int | float) and 0 < ttl < math.inf):
            raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
        self.ratio = float(ratio)
        self.min_per_second = float(min_per_second)
        self.ttl = float(ttl)
        self._reserve = self.min_per_second * self.ttl
        self._width = self.ttl / self._SLOTS
        self._slots = [_Slot() for _ in range(self._SLOTS)]
        self._clock = clock
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"RetryBudget(ratio={self.ratio}, min_per_second={self.min_per_second}, ttl={self.ttl})"
        )

    def _slot(self, tick: int) -> _Slot:
        slot = self._slots[tick % self._SLOTS]
        if slot.tick != tick:
            slot.tick = tick
            slot.deposits = 0
            slot.withdrawals = 0
        return slot

    def deposit(self) -> None:
        """Count one call (made once per call, before its first attempt)."""
        tick = int(self._clock() // self._width)
        with self._lock:
            self._slot(tick).deposits += 1

    def try_withdraw(self) -> bool:
        """Take one retry from the budget.

        Returns:
            ``True`` when the retry may go ahead (and is counted), ``False`` when the budget is
            spent.
        """
        tick = int(self._clock() // self._width)
        with self._lock:
            if self._balance(tick) < 1.0:
                return False
            self._slot(tick).withdrawals += 1
            return True

    @property
    def balance(self) -> float:
        """Retries that would be allowed right now."""
        tick = int(self._clock() // self._width)
        with self._lock:
            return self._balance(tick)

    def _balance(self, tick: int) -> float:
        deposits = withdrawals = 0
        oldest = tick - self._SLOTS
        for slot in self._slots:
            if oldest < slot.tick <= tick:
                deposits += slot.deposits
                withdrawals += slot.withdrawals
        return self._reserve + self.ratio * deposits - withdrawals
