"""Client-side figures of a step, from the completions its calls recorded (pure, no I/O).

Every call records when it was *meant* to start (``ref``) and when it finished (``done``), on
the generator's clock. In a closed loop ``ref`` is the send time; in an open loop it is the
arrival's intended time from the Poisson schedule, so that a stalled server or a late generator
shows up as latency instead of silently delaying the next sends (no coordinated omission).

The measured window ``[start, end]`` gives:

- throughput: successful calls that *finished* in the window, per second of window (what the
  server-side counters see over the same window);
- latency and errors: calls that finished in the window (closed loop), or calls *intended* in the
  window wherever they finished (open loop: the late ones are waited for).
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from eas_client import (
    ConnectError,
    NoInstanceAvailable,
    ProtocolError,
    ServerError,
    TimeoutException,
)

__all__ = [
    "ClientStats",
    "GeneratorStats",
    "LatencySummary",
    "Samples",
    "error_kind",
    "generator_stats",
    "percentile",
    "summarize",
]

SATURATED_PERCENT = 90.0
"""Generator CPU (percent of one core) from which a step is flagged: the generator, not the
server, may be what limits it."""


def percentile(ordered: Sequence[float] | npt.NDArray[np.float64], q: float) -> float:
    """The nearest-rank ``q``-quantile of ``ordered`` (sorted ascending, not empty).

    The smallest value such that at least a fraction ``q`` of the values are <= it (so ``q=1``
    is the maximum, and a p99 of 100 values is the 99th smallest), as HdrHistogram reports.

    Raises:
        ValueError: ``ordered`` is empty or ``q`` is outside ``[0, 1]``.
    """
    if len(ordered) == 0:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q!r}")
    rank = max(1, math.ceil(q * len(ordered) - 1e-9))
    return float(ordered[rank - 1])


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Latencies of a step's successful calls, in seconds."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, latencies: Sequence[float] | npt.NDArray[np.float64]) -> LatencySummary | None:
        """The summary of ``latencies`` (any order); ``None`` for none."""
        if len(latencies) == 0:
            return None
        # stays an array: a list of a window's latencies would be a million float objects
        ordered = np.sort(np.asarray(latencies, dtype=np.float64))
        return cls(
            count=len(ordered),
            mean=math.fsum(ordered) / len(ordered),
            p50=percentile(ordered, 0.50),
            p90=percentile(ordered, 0.90),
            p99=percentile(ordered, 0.99),
            max=float(ordered[-1]),
        )


@dataclass(frozen=True, slots=True)
class ClientStats:
    """What the application side saw in one step.

    Attributes:
        requests: successful calls that finished in the window.
        qps: ``requests`` per second of window.
        latency: latencies of the successful calls (see the module docstring), or ``None``.
        errors: failed calls by kind (``error_kind``), sorted by kind.
    """

    requests: int
    qps: float
    latency: LatencySummary | None
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


class Samples:
    """The completions of one step's calls, appended by the load loops (hot path: two appends).

    Successful calls' times are kept in ``array("d")`` buffers, 16 bytes a call instead of two
    float objects and two list slots (about 64 bytes): an hour at 1,500 QPS is 5.4 million calls,
    and a window's buffers go back to the OS in one piece when the step ends, so the generator's
    own bookkeeping does not pose as the SDK's memory growth in a soak.
    """

    __slots__ = ("failed", "ok_done", "ok_ref")

    def __init__(self) -> None:
        self.ok_ref = array("d")
        self.ok_done = array("d")
        self.failed: list[tuple[float, float, str]] = []

    def ok(self, ref: float, done: float) -> None:
        self.ok_ref.append(ref)
        self.ok_done.append(done)

    def error(self, ref: float, done: float, kind: str) -> None:
        self.failed.append((ref, done, kind))

    def __len__(self) -> int:
        return len(self.ok_ref) + len(self.failed)


def summarize(samples: Samples, start: float, end: float, *, by_intended: bool) -> ClientStats:
    """The client-side figures of the window ``[start, end]`` (see the module docstring).

    Args:
        samples: what the step's calls recorded.
        start, end: the measured window, on the clock the samples were taken with.
        by_intended: open loop: latency and errors over the calls intended in the window.

    Raises:
        ValueError: ``end`` is not after ``start``.
    """
    if not end > start:
        raise ValueError(f"empty window [{start}, {end}]")
    done = np.array(samples.ok_done, dtype=np.float64)  # copies: the loops may still append
    ref = np.array(samples.ok_ref, dtype=np.float64)
    finished = (start <= done) & (done <= end)
    requests = int(finished.sum())
    if by_intended:
        chosen = (start <= ref) & (ref < end)
        errors = Counter(k for r, _, k in samples.failed if start <= r < end)
    else:
        chosen = finished
        errors = Counter(k for _, d, k in samples.failed if start <= d <= end)
    latencies = (done - ref)[chosen]
    return ClientStats(
        requests=requests,
        qps=requests / (end - start),
        latency=LatencySummary.of(latencies),
        errors=dict(sorted(errors.items())),
    )


def error_kind(exc: BaseException) -> str:
    """A short name for what went wrong with one call: ``HTTP 503``, ``timeout``, ``connect``,
    ``no instance``, ``protocol``, or the exception's class name."""
    if isinstance(exc, ServerError):
        return f"HTTP {exc.status_code}"
    if isinstance(exc, TimeoutException | TimeoutError):
        return "timeout"
    if isinstance(exc, NoInstanceAvailable):
        return "no instance"
    if isinstance(exc, ConnectError | ConnectionError):
        return "connect"
    if isinstance(exc, ProtocolError):
        return "protocol"
    return type(exc).__name__


@dataclass(frozen=True, slots=True)
class GeneratorStats:
    """The load generator's own CPU over a step's window.

    Attributes:
        cpu_s: CPU seconds of the generator's process (user + system, every thread).
        cpu_percent: ``cpu_s`` over the window's wall time, in percent of one core.
        cpu_per_call_us: ``cpu_s`` per call made in the window, in microseconds (``None``: none).
        saturated: ``cpu_percent`` >= 90: the generator may be the bottleneck of the step.
    """

    cpu_s: float
    cpu_percent: float
    cpu_per_call_us: float | None
    saturated: bool


def generator_stats(cpu_s: float, wall_s: float, calls: int) -> GeneratorStats:
    """``GeneratorStats`` of ``cpu_s`` CPU seconds spent over ``wall_s`` making ``calls`` calls.

    Raises:
        ValueError: ``wall_s`` is not positive.
    """
    if not wall_s > 0:
        raise ValueError(f"wall time must be > 0, got {wall_s!r}")
    percent = 100.0 * max(cpu_s, 0.0) / wall_s
    per_call = 1e6 * cpu_s / calls if calls > 0 else None
    return GeneratorStats(max(cpu_s, 0.0), percent, per_call, percent >= SATURATED_PERCENT)
