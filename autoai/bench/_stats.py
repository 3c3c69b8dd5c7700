"""Client-side figures of a step, from the completions its calls recorded (pure, no I/O).

Every call records when it was *meant* to start (``ref``) and when it finished (``done``), on
the generator's clock. In a closed loop ``ref`` is the send time; in an open loop it is the
arrival's intended time from the Poisson schedule, so that a stalled server or a late generator
shows up as latency instead of silently delaying the next sends (no coordinated omission).

The measured window ``[start, end]`` gives (``_window`` computes it, for one process or several):

- throughput: successful calls that *finished* in the window, per second of window (what the
  server-side counters see over the same window);
- latency and errors: calls that finished in the window (closed loop), or calls *intended* in the
  window wherever they finished (open loop: the late ones are waited for).
"""

from __future__ import annotations

import math
from array import array
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
        total_ok, total_failed: every call of the step, its warmup and drain included (what
            the servers counted while the step ran).
    """

    requests: int
    qps: float
    latency: LatencySummary | None
    errors: dict[str, int] = field(default_factory=dict)
    total_ok: int = 0
    total_failed: int = 0

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
        cpu_s: CPU seconds of the generator's processes (user + system, every thread), summed.
        cpu_percent: ``cpu_s`` over the window's wall time, in percent of one core (above 100
            with several processes).
        cpu_per_call_us: ``cpu_s`` per call made in the window, in microseconds (``None``: none).
        saturated: one process used 90% of its core or more: the generator may be the
            bottleneck of the step.
        per_process_percent: each generator process's CPU, in percent of one core.
    """

    cpu_s: float
    cpu_percent: float
    cpu_per_call_us: float | None
    saturated: bool
    per_process_percent: tuple[float, ...] = ()

    @property
    def cpu_cores(self) -> float:
        """The CPU of every generator process together, in cores."""
        return self.cpu_percent / 100.0

    @property
    def processes(self) -> int:
        return max(1, len(self.per_process_percent))


def generator_stats(cpu_s: float | Sequence[float], wall_s: float, calls: int) -> GeneratorStats:
    """``GeneratorStats`` of ``cpu_s`` CPU seconds spent over ``wall_s`` making ``calls`` calls.

    Args:
        cpu_s: CPU seconds of the one generator process, or of each of several.
        wall_s: the window.
        calls: calls made in the window, by every process.

    Raises:
        ValueError: ``wall_s`` is not positive.
    """
    if not wall_s > 0:
        raise ValueError(f"wall time must be > 0, got {wall_s!r}")
    each = [max(c, 0.0) for c in ([cpu_s] if isinstance(cpu_s, int | float) else cpu_s)]
    total = math.fsum(each)
    per_process = tuple(100.0 * c / wall_s for c in each)
    percent = 100.0 * total / wall_s
    per_call = 1e6 * total / calls if calls > 0 else None
    saturated = any(p >= SATURATED_PERCENT for p in per_process)
    return GeneratorStats(total, percent, per_call, saturated, per_process)
