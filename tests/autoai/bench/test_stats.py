"""Percentiles, window accounting, error kinds and generator CPU (pure, no I/O)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, strategies as st

from autoai.bench import LatencySummary, Samples, error_kind, generator_stats, percentile, summarize
from eas_client import (
    ConnectError,
    InvalidRequest,
    NoInstanceAvailable,
    ProtocolError,
    ServerError,
    ServiceUnavailable,
    TimeoutException,
)


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 0.50) == 50
    assert percentile(values, 0.90) == 90
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile(values, 0.0) == 1
    assert percentile([7.0], 0.99) == 7
    assert percentile([1.0, 2.0], 0.5) == 1  # at least half the values are <= 1
    assert percentile([1.0, 2.0], 0.51) == 2


def test_percentile_refuses_nothing_and_bad_q() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        percentile([1.0], 1.5)


@given(
    st.lists(st.floats(0, 1e3, allow_nan=False), min_size=1, max_size=200),
    st.floats(0, 1),
    st.floats(0, 1),
)
def test_percentile_is_a_value_with_at_least_q_at_or_below_and_grows_with_q(
    values: list[float], q1: float, q2: float
) -> None:
    ordered = sorted(values)
    p = percentile(ordered, q1)
    assert p in ordered
    assert sum(v <= p for v in ordered) >= q1 * len(ordered) - 1e-6
    # and it is the smallest such value
    assert sum(v < p for v in ordered) < max(q1 * len(ordered), 1)
    lo, hi = sorted((q1, q2))
    assert percentile(ordered, lo) <= percentile(ordered, hi)


def test_latency_summary() -> None:
    summary = LatencySummary.of([0.003, 0.001, 0.002, 0.010])
    assert summary is not None
    assert (summary.count, summary.p50, summary.max) == (4, 0.002, 0.010)
    assert summary.mean == pytest.approx(0.004)
    assert LatencySummary.of([]) is None


def test_a_closed_loop_window_counts_what_finished_in_it() -> None:
    s = Samples()
    s.ok(0.5, 0.9)  # warmup: before the window
    s.ok(0.9, 1.2)  # sent before, finished inside: counted, 0.3 s
    s.ok(1.2, 1.3)
    s.error(1.3, 1.4, "HTTP 503")
    s.ok(2.9, 3.1)  # finished after the window
    s.error(2.95, 3.2, "timeout")
    stats = summarize(s, 1.0, 3.0, by_intended=False)
    assert stats.requests == 2
    assert stats.qps == pytest.approx(1.0)
    assert stats.latency is not None
    assert stats.latency.max == pytest.approx(0.3)
    assert stats.errors == {"HTTP 503": 1}
    assert stats.error_count == 1


def test_an_open_loop_window_times_calls_intended_in_it_wherever_they_finished() -> None:
    s = Samples()
    s.ok(0.9, 1.1)  # intended before the window: not in the latencies, but its completion
    s.ok(1.5, 1.6)  # counts in the throughput, as the server's counters see it
    s.ok(2.9, 4.0)  # intended inside, finished late: its 1.1 s counts
    s.error(2.0, 3.5, "timeout")
    stats = summarize(s, 1.0, 3.0, by_intended=True)
    assert stats.requests == 2  # finished in the window: 1.1 and 1.6
    assert stats.latency is not None
    assert stats.latency.count == 2
    assert stats.latency.max == pytest.approx(1.1)
    assert stats.errors == {"timeout": 1}


def test_summarize_refuses_an_empty_window() -> None:
    with pytest.raises(ValueError, match="empty window"):
        summarize(Samples(), 2.0, 2.0, by_intended=False)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (ServiceUnavailable("queue full", status_code=503), "HTTP 503"),
        (InvalidRequest("bad", status_code=400), "HTTP 400"),
        (ServerError("boom", status_code=500), "HTTP 500"),
        (TimeoutException("slow"), "timeout"),
        (TimeoutError(), "timeout"),
        (NoInstanceAvailable("none"), "no instance"),
        (ConnectError("refused"), "connect"),
        (ConnectionResetError(), "connect"),
        (ProtocolError("garbled"), "protocol"),
        (KeyError("x"), "KeyError"),
    ],
)
def test_error_kinds(error: BaseException, kind: str) -> None:
    assert error_kind(error) == kind


def test_generator_stats_flags_a_saturated_core() -> None:
    calm = generator_stats(0.2, 2.0, 1000)
    assert calm.cpu_percent == pytest.approx(10.0)
    assert calm.cpu_per_call_us == pytest.approx(200.0)
    assert not calm.saturated
    busy = generator_stats(1.9, 2.0, 100)
    assert busy.saturated and math.isclose(busy.cpu_percent, 95.0)
    assert generator_stats(0.1, 1.0, 0).cpu_per_call_us is None
    with pytest.raises(ValueError):
        generator_stats(0.1, 0.0, 1)
