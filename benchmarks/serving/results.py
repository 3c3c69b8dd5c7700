"""What a run found: per-round wrk results per cell, their medians, and the issue's targets.

Every number is taken in rounds: a round loads each (server, body format) cell once at each
concurrency and re-measures the in-process ceiling, so a drift of the machine's speed over
minutes touches every server alike within a round. A cell reports the median over rounds; a
ratio to the ceiling or to the naive server is taken within each round first (against that
round's ceiling or naive run) and the median of those per-round ratios is reported.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from .ceiling import Ceiling
from .loadgen import LoadResult

# Issue 3's targets on this 2-core machine.
CEILING_TARGET = 0.9  # req/s at the highest concurrency vs the best-batch in-process ceiling
NAIVE_TARGET = 1.0  # req/s at concurrency 1 vs the naive server (same body format)
TAIL_TARGET = 2.0  # p99 <= 2 x p50 at every concurrency
BUSY_LIMIT = 0.2  # cores busy outside the server, wrk and this process that spoil a run


def median(values: Sequence[float]) -> float:
    """The median of the finite `values`, NaN when there is none."""
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


@dataclass
class Row:
    """One server x body format: per round, a wrk result per concurrency; or why there is none."""

    server: str
    fmt: str
    rounds: list[dict[int, LoadResult]] = field(default_factory=list)  # index: round
    note: str = ""
    reruns: int = 0  # runs measured again because other work shared the machine

    def record(self, round_: int, result: LoadResult) -> None:
        while len(self.rounds) <= round_:
            self.rounds.append({})
        self.rounds[round_][result.concurrency] = result

    @property
    def concurrencies(self) -> list[int]:
        return sorted({c for points in self.rounds for c in points})

    def at(self, c: int) -> list[LoadResult]:
        """The results at concurrency `c`, one per round that has one."""
        return [points[c] for points in self.rounds if c in points]

    def rps(self, round_: int, c: int) -> float:
        """req/s at `c` in round `round_`, NaN when that round has no such result."""
        point = self.rounds[round_].get(c) if round_ < len(self.rounds) else None
        return point.rps if point is not None else math.nan


def naive_peer(rows: Sequence[Row], fmt: str) -> Row | None:
    """The naive row that `fmt` rows are compared with: the same body format; for a format the
    naive server does not speak (gRPC), its binary one (raw tensor bytes, like gRPC's)."""
    naive = {row.fmt: row for row in rows if row.server == "naive"}
    return naive.get(fmt) or naive.get("binary")


@dataclass
class ModelResult:
    """One model's part of a run: its ceiling sweep, its ceiling in each round, its rows."""

    key: str  # "fast", "slow" or "custom"
    name: str
    seq: int
    sweep: Ceiling
    ceilings: list[Ceiling]  # index: round
    rows: list[Row]
    ceiling_reruns: int = 0

    @property
    def batch1_ms(self) -> float:
        """Milliseconds per batch-1 call in-process: the median over rounds (the sweep's when
        no round measured it)."""
        rounds = [c.latency_s[1] for c in self.ceilings if 1 in c.latency_s]
        return 1e3 * (median(rounds) if rounds else self.sweep.latency_s.get(1, math.nan))


@dataclass(frozen=True)
class Summary:
    """The medians over rounds of one cell at one concurrency; `other_cpu` is the largest."""

    rounds: int
    rps: float
    p50: float
    p99: float
    wrk_cpu: float
    server_cpu: float
    other_cpu: float
    failures: int  # non-2xx + socket errors + gRPC errors, summed over rounds


def summary(row: Row, c: int) -> Summary | None:
    points = row.at(c)
    if not points:
        return None
    return Summary(
        rounds=len(points),
        rps=median([p.rps for p in points]),
        p50=median([p.p50 for p in points]),
        p99=median([p.p99 for p in points]),
        wrk_cpu=median([p.wrk_cpu for p in points]),
        server_cpu=median([p.server_cpu for p in points]),
        other_cpu=max(p.other_cpu for p in points),
        failures=sum(p.failures for p in points),
    )


@dataclass
class Targets:
    ceiling_ratio: float  # median over rounds of req/s at the top concurrency / that round's best
    naive_ratio: float  # median over rounds of req/s at the lowest / that round's naive req/s
    tail_ok: bool  # median p99 <= TAIL_TARGET x median p50 at every concurrency
    ceiling_ratios: list[float]  # per round
    naive_ratios: list[float]  # per round

    def marks(self, is_naive: bool) -> str:
        def mark(ok: bool) -> str:
            return "✓" if ok else "✗"

        parts = [f"ceil {mark(self.ceiling_ratio >= CEILING_TARGET)}"]
        if not is_naive:
            parts.append(f"naive {mark(self.naive_ratio >= NAIVE_TARGET)}")
        parts.append(f"p99 {mark(self.tail_ok)}")
        return " ".join(parts)


def targets(row: Row, ceilings: Sequence[Ceiling], naive: Row | None) -> Targets | None:
    """Row `row` against the ceiling and the naive row (same body format), round by round."""
    concurrencies = row.concurrencies
    if not concurrencies:
        return None
    low, high = concurrencies[0], concurrencies[-1]
    ceiling_ratios, naive_ratios = [], []
    for r in range(len(row.rounds)):
        if r < len(ceilings) and ceilings[r].best > 0:
            ceiling_ratios.append(row.rps(r, high) / ceilings[r].best)
        base = naive.rps(r, low) if naive is not None else math.nan
        naive_ratios.append(row.rps(r, low) / base if base > 0 else math.nan)
    tail_ok = True
    for c in concurrencies:
        s = summary(row, c)
        tail_ok = tail_ok and s is not None and s.p99 <= TAIL_TARGET * s.p50
    return Targets(
        median(ceiling_ratios), median(naive_ratios), tail_ok, ceiling_ratios, naive_ratios
    )
