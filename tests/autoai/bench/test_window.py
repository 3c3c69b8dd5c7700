"""``--processes N`` as pure functions: the merge of the processes' parts of a window equals the
figures of the union of their samples, the load is shared evenly, the CPU is summed per process."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

from autoai.bench import (
    Samples,
    Step,
    WindowPart,
    generator_stats,
    merge_parts,
    summarize,
    window_part,
)
from autoai.bench._split import shares, split_step

# one call: (ref, latency, error kind or None: ok), on a clock where the window is [1, 3]
_CALL = st.tuples(
    st.floats(0.0, 4.0, allow_nan=False),
    st.floats(0.0, 1.5, allow_nan=False),
    st.sampled_from([None, None, None, "HTTP 503", "timeout"]),
)


def _samples(calls: list[tuple[float, float, str | None]]) -> Samples:
    samples = Samples()
    for ref, latency, kind in calls:
        if kind is None:
            samples.ok(ref, ref + latency)
        else:
            samples.error(ref, ref + latency, kind)
    return samples


@given(
    st.lists(st.tuples(_CALL, st.integers(0, 2)), max_size=120),
    st.booleans(),
)
def test_merging_the_parts_of_three_processes_equals_summarizing_their_union(
    calls: list[tuple[tuple[float, float, str | None], int]], by_intended: bool
) -> None:
    union = _samples([call for call, _ in calls])
    parts = [
        window_part(
            _samples([call for call, who in calls if who == process]),
            1.0,
            3.0,
            by_intended=by_intended,
        )
        for process in range(3)
    ]
    merged = merge_parts(parts, 1.0, 3.0)
    assert merged == summarize(union, 1.0, 3.0, by_intended=by_intended)
    assert merged.total_ok + merged.total_failed == len(calls)


def test_merged_percentiles_come_from_the_union_not_an_average() -> None:
    fast = _samples([(1.0 + i / 1000, 0.001, None) for i in range(99)])
    slow = _samples([(1.5, 0.500, None)])
    parts = [window_part(s, 1.0, 3.0, by_intended=False) for s in (fast, slow)]
    merged = merge_parts(parts, 1.0, 3.0)
    assert merged.latency is not None
    assert merged.requests == 100 and merged.qps == pytest.approx(50.0)
    assert merged.latency.p50 == pytest.approx(0.001)  # an average of p50s would say 0.25 s
    assert merged.latency.p99 == pytest.approx(0.001)  # the 99th of 100 values
    assert merged.latency.max == pytest.approx(0.5)


def test_counts_and_errors_are_summed() -> None:
    one = WindowPart(3, np.array([0.1, 0.2, 0.3]), {"timeout": 1}, total_ok=5, total_failed=1)
    two = WindowPart(1, np.array([0.4]), {"HTTP 503": 2, "timeout": 1}, 2, 3)
    merged = merge_parts([one, two], 0.0, 2.0)
    assert (merged.requests, merged.qps) == (4, 2.0)
    assert merged.errors == {"HTTP 503": 2, "timeout": 2}
    assert (merged.total_ok, merged.total_failed) == (7, 4)
    nothing = merge_parts([], 0.0, 1.0)
    assert (nothing.requests, nothing.latency, nothing.errors) == (0, None, {})
    with pytest.raises(ValueError, match="empty window"):
        merge_parts([one], 2.0, 2.0)


def test_the_load_is_shared_as_evenly_as_possible() -> None:
    assert shares(32, 8) == [4] * 8
    assert shares(10, 4) == [3, 3, 2, 2]
    assert shares(5, 1) == [5]
    assert split_step(Step(concurrency=32), 8) == [Step(concurrency=4)] * 8
    opened = split_step(Step(rate=1000.0, max_in_flight=256), 3)
    assert [s.rate for s in opened] == pytest.approx([1000 / 3] * 3)
    assert [s.max_in_flight for s in opened] == [86, 85, 85]
    with pytest.raises(ValueError, match="concurrency 3 is less than 4 processes"):
        split_step(Step(concurrency=3), 4)
    with pytest.raises(ValueError, match="in-flight limit 2 is less than 3 processes"):
        split_step(Step(rate=10.0, max_in_flight=2), 3)
    with pytest.raises(ValueError, match=">= 1"):
        shares(4, 0)


@given(st.integers(1, 10_000), st.integers(1, 64))
def test_shares_add_up_and_differ_by_at_most_one(total: int, n: int) -> None:
    if total < n:
        with pytest.raises(ValueError):
            shares(total, n)
        return
    parts = shares(total, n)
    assert sum(parts) == total and len(parts) == n
    assert max(parts) - min(parts) <= 1 and parts == sorted(parts, reverse=True)


def test_the_cpu_of_several_processes_is_summed_and_one_busy_process_is_flagged() -> None:
    two = generator_stats([0.5, 1.0], 2.0, 3000)
    assert two.cpu_s == pytest.approx(1.5)
    assert two.cpu_cores == pytest.approx(0.75) and two.cpu_percent == pytest.approx(75.0)
    assert two.per_process_percent == pytest.approx((25.0, 50.0))
    assert two.cpu_per_call_us == pytest.approx(500.0)
    assert (two.processes, two.saturated) == (2, False)
    busy = generator_stats([0.1, 1.9], 2.0, 10)  # 100% of one core in all, but one is at 95%
    assert busy.saturated and busy.cpu_cores == pytest.approx(1.0)
    one = generator_stats(0.2, 2.0, 1000)
    assert one.processes == 1 and one.per_process_percent == pytest.approx((10.0,))
