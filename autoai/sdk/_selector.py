"""Route selection on the call path: a weighted split, sticky keys, and the shadow fraction.

A ``RouteSelector`` is built once per route table revision; everything it needs is precomputed,
so that ``pick`` is a counter step and a tuple lookup (or one hash and two lookups for a sticky
key) and takes no lock. The only mutable state is two
``itertools.count`` counters, whose ``next()`` is a single C call and therefore atomic under the
GIL: concurrent callers each get a distinct sequence number, and the split among N concurrent
calls is the split of N sequential ones.

Weighted split (no key, or no ``sticky_key``): a fixed schedule of routes, one slot per unit of
(gcd-reduced) weight, where the j-th slot of a route with c slots sits at the ideal time
``(j + 1/2) / c``. From the schedule's start, every route is within ``(k + 1) / 2`` calls of its
share after any number of calls (k: the number of routes with weight > 0), and within ``k + 1``
over any run of calls starting elsewhere, so 10,000 calls split to well within 0.1 percentage
point. Weights summing past ``MAX_SCHEDULE`` (after the gcd) are apportioned to that many slots
(largest remainders, at least one slot per positive weight). Each selector starts at a random
slot: after a publish every SDK process rebuilds its selector, and a common start would send
every process's first calls to the same route at once.

Sticky split (``sticky_key`` set and a ``key=``): weighted rendezvous hashing (highest random
weight, score ``-w / ln h``) over the routes with weight > 0, evaluated once per revision for each
of ``STICKY_BUCKETS`` key buckets rather than per call: hashing the key once and reading the
bucket's winner keeps ``pick`` at one hash whatever the number of routes, while keeping
rendezvous's properties (a key's version only changes when the table does; changing one route's
weight only moves keys to or from that route, about the change in its share). The split of
distinct keys follows the weights up to the sampling noise of 65,536 buckets (about 0.2 percentage
point). Stable across processes and machines (no ``hash()``), and reproducible elsewhere:

- ``bucket = uint64_le(blake2b(key, digest_size=8)) mod 65536`` (``str`` keys as UTF-8);
- ``seed(v) = uint64_le(blake2b(version, digest_size=8, person=b"autoai-sticky"))``;
- ``h = fmix64(seed(v) XOR (bucket * 0x9E3779B97F4A7C15 mod 2**64))`` (MurmurHash3's finalizer),
  ``u = ((h >> 11) + 1/2) / 2**53``; the bucket's route is the one with the highest
  ``weight / -ln(u)`` (ties, practically impossible, go to the route published first).

Shadow (``shadow_due``): call n (from a random start s) is mirrored when
``floor((n + 1) r) > floor(n r)``, with r the shadow ratio as a fraction (denominator at most
1,000,000): any window of N calls mirrors ``floor(N r)`` or ``ceil(N r)`` of them, no randomness.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from array import array
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from ._errors import InvalidRouteTable
from ._routes import Route, RouteTable

__all__ = ["MAX_SCHEDULE", "STICKY_BUCKETS", "RouteSelector"]

MAX_SCHEDULE = 1 << 16
"""Most slots in the weighted schedule; larger weight sums are apportioned to this many."""

STICKY_BUCKETS = 1 << 16
"""Key buckets of the sticky split (a power of two: the bucket is the hash's low bits)."""

_BUCKET_MASK = STICKY_BUCKETS - 1
_SHADOW_MAX_DENOMINATOR = 1_000_000
_GOLDEN = 0x9E3779B97F4A7C15
_FMIX_1 = 0xFF51AFD7ED558CCD
_FMIX_2 = 0xC4CEB9FE1A85EC53
_blake2b = hashlib.blake2b
_KEY_HASHER = _blake2b(digest_size=8)  # never updated: each pick hashes into a copy
_from_bytes = int.from_bytes


class RouteSelector:
    """Picks the route of each unpinned call of one route table revision; thread-safe, lock-free.

    Args:
        table: the route table (at least one route with weight > 0, which ``parse_route_table``
            guarantees).
        start: the position to start the weighted schedule and the shadow sequence at; ``None``
            (the default) picks one at random. Tests pass 0 to get the same sequence every time.

    Raises:
        InvalidRouteTable: no route of the table has a weight > 0.
    """

    __slots__ = (
        "_buckets",
        "_counter",
        "_length",
        "_schedule",
        "_shadow_counter",
        "_shadow_den",
        "_shadow_num",
        "_sticky_routes",
        "table",
    )

    def __init__(self, table: RouteTable, *, start: int | None = None):
        self.table = table
        routes = tuple(r for r in table.routes if r.weight > 0)
        if not routes:
            raise InvalidRouteTable(
                "routes",
                "no route has a weight > 0: no version could take traffic",
                model=table.model,
                revision=table.revision,
            )
        self._schedule = _schedule(routes, _slot_counts([r.weight for r in routes]))
        self._length = len(self._schedule)
        rng = random.Random()
        self._counter = itertools.count(rng.randrange(self._length) if start is None else start)

        # One positive route: every key maps to it, the schedule says so without hashing.
        self._sticky_routes = routes
        self._buckets: array[int] | None = None
        if table.sticky_key is not None and len(routes) > 1:
            self._buckets = _rendezvous_buckets(routes)

        ratio = Fraction(table.shadow.ratio if table.shadow is not None else 0)
        ratio = ratio.limit_denominator(_SHADOW_MAX_DENOMINATOR)
        self._shadow_num = ratio.numerator
        self._shadow_den = ratio.denominator
        shadow_start = rng.randrange(self._shadow_den) if start is None else start
        self._shadow_counter = itertools.count(shadow_start)

    @property
    def sticky(self) -> bool:
        """Whether ``pick(key)`` is sticky (the table has a ``sticky_key`` and a choice to make)."""
        return self._buckets is not None

    def pick(self, key: str | bytes | None = None) -> Route:
        """The route for one call.

        Args:
            key: the call's sticky key (the value of the table's ``sticky_key``, such as a user
                id). When the table has a ``sticky_key``, the same key always gets the same route
                while the versions and weights stay the same (in any process, at any revision);
                otherwise the key is ignored.

        Returns:
            A route with weight > 0.
        """
        buckets = self._buckets
        if key is None or buckets is None:
            return self._schedule[next(self._counter) % self._length]
        if isinstance(key, str):
            key = key.encode("utf-8", "surrogatepass")
        hasher = _KEY_HASHER.copy()  # cheaper than blake2b(key, digest_size=8), same digest
        hasher.update(key)
        return self._sticky_routes[buckets[_from_bytes(hasher.digest(), "little") & _BUCKET_MASK]]

    def shadow_due(self) -> bool:
        """Whether this call should also be sent to the shadow version.

        Exactly the shadow ratio of calls, spread evenly (any N calls mirror ``floor(N * ratio)``
        or ``ceil(N * ratio)``); always ``False`` without a shadow.
        """
        n = next(self._shadow_counter)
        num = self._shadow_num
        return (n + 1) * num // self._shadow_den != n * num // self._shadow_den

    def __repr__(self) -> str:
        return (
            f"RouteSelector(model={self.table.model!r}, revision={self.table.revision}, "
            f"slots={self._length}, sticky={self.sticky})"
        )


def _slot_counts(weights: Sequence[int]) -> list[int]:
    """Slots per route: the weights over their gcd, apportioned to MAX_SCHEDULE if larger."""
    divisor = math.gcd(*weights)
    counts = [w // divisor for w in weights]
    total = sum(counts)
    if total <= MAX_SCHEDULE:
        return counts
    shares = [divmod(c * MAX_SCHEDULE, total) for c in counts]
    counts = [q for q, _ in shares]
    by_remainder = sorted(range(len(counts)), key=lambda i: shares[i][1], reverse=True)
    for i in by_remainder[: MAX_SCHEDULE - sum(counts)]:
        counts[i] += 1
    # A positive weight keeps at least one slot (a canary at 1 in 10**7 still gets calls).
    return [max(1, c) for c in counts]


def _schedule(routes: Sequence[Route], counts: Sequence[int]) -> tuple[Route, ...]:
    """Every route's slots merged in the order of their ideal times ``(j + 1/2) / count``.

    The float keys order exactly as the fractions do: two different fractions with denominators
    below 2**18 differ by more than 2**-36, far above a double's rounding, and equal fractions
    round to the same double. Ties go to the route published first.
    """
    slots = sorted(((j + 0.5) / count, i) for i, count in enumerate(counts) for j in range(count))
    return tuple(routes[i] for _, i in slots)


def _version_seed(version: str) -> int:
    digest = _blake2b(version.encode(), digest_size=8, person=b"autoai-sticky").digest()
    return _from_bytes(digest, "little")


def _rendezvous_buckets(routes: Sequence[Route]) -> array[int]:
    """The winning route (index into ``routes``) of every key bucket, by weighted rendezvous."""
    buckets = np.arange(STICKY_BUCKETS, dtype=np.uint64) * np.uint64(_GOLDEN)
    scores = np.empty((len(routes), STICKY_BUCKETS), dtype=np.float64)
    for i, route in enumerate(routes):
        h = buckets ^ np.uint64(_version_seed(route.version))
        h ^= h >> np.uint64(33)
        h *= np.uint64(_FMIX_1)
        h ^= h >> np.uint64(33)
        h *= np.uint64(_FMIX_2)
        h ^= h >> np.uint64(33)
        u = ((h >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
        scores[i] = route.weight / -np.log(u)
    winners = scores.argmax(axis=0)
    small = len(routes) <= 0xFFFF
    out = array("H" if small else "L")
    out.frombytes(winners.astype(np.uint16 if small else np.dtype(f"u{out.itemsize}")).tobytes())
    return out
