"""The Poisson schedule and the load loops on a virtual clock: an open loop times each call from
its intended send time, so a server that falls behind shows in the latencies (no coordinated
omission), where a closed loop sees only the service time."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
import statistics
from collections.abc import Coroutine
from typing import Any

import pytest

from autoai.bench import ArrivalPlan, Samples, closed_loop, open_loop, summarize
from eas_client import ServiceUnavailable


def test_the_schedule_is_poisson_at_the_rate() -> None:
    plan = ArrivalPlan(500.0, 10.0, random.Random(1))
    times = plan.due(10.0 + 60.0)
    assert abs(len(times) / 60.0 - 500.0) < 500.0 * 0.02
    gaps = [b - a for a, b in itertools.pairwise(times)]
    mean = statistics.fmean(gaps)
    assert mean == pytest.approx(1 / 500, rel=0.03)
    assert statistics.pstdev(gaps) / mean == pytest.approx(1.0, abs=0.05)  # exponential: CV 1
    assert times == sorted(times) and times[0] > 10.0


def test_the_schedule_is_repeatable_and_hands_late_arrivals_their_own_times() -> None:
    one = ArrivalPlan(100.0, 0.0, random.Random(7))
    two = ArrivalPlan(100.0, 0.0, random.Random(7))
    assert one.due(0.0) == [] or one.next_at == 0.0
    early = one.due(0.5)
    stalled = one.due(1.5)  # the generator was away for a second: nothing is lost
    assert two.due(1.5) == early + stalled
    assert all(0.5 < t <= 1.5 for t in stalled) and len(stalled) > 50
    assert one.next_at > 1.5
    assert one.due(1.5) == []


@pytest.mark.parametrize("rate", [0, -1, float("inf"), float("nan")])
def test_the_schedule_refuses_a_bad_rate(rate: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        ArrivalPlan(rate, 0.0)


class VirtualClock:
    """Time that moves only when every task waits: the next timer fires at once."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + max(0.0, seconds), self._seq, future))
        self._seq += 1
        await future

    async def drive(self, main: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(main)
        while not task.done():
            for _ in range(30):  # let every runnable task reach its next wait
                await asyncio.sleep(0)
            if task.done():
                break
            assert self._timers, "every task waits and no timer is left"
            at = self._timers[0][0]
            self.now = at
            while self._timers and self._timers[0][0] <= at:
                heapq.heappop(self._timers)[2].set_result(None)
        task.result()


class FifoServer:
    """One call at a time, ``service`` seconds each, in arrival order."""

    def __init__(self, clock: VirtualClock, service: float) -> None:
        self.clock = clock
        self.service = service
        self.free_at = 0.0

    async def send(self) -> None:
        start = max(self.clock.now, self.free_at)
        self.free_at = start + self.service
        await self.clock.sleep(self.free_at - self.clock.now)


def _open(rate: float, service: float, until: float, max_in_flight: int) -> Samples:
    clock = VirtualClock()
    server = FifoServer(clock, service)
    samples = Samples()
    loop = open_loop(
        server.send,
        rate,
        samples,
        lambda: clock.now < until,
        max_in_flight=max_in_flight,
        clock=clock.time,
        sleep=clock.sleep,
        rng=random.Random(3),
    )
    asyncio.run(clock.drive(loop))
    return samples


def test_an_open_loop_counts_latency_from_the_intended_time() -> None:
    # 100 arrivals/s offered to a server that does 50/s: the queue, and the latency, grow.
    samples = _open(rate=100.0, service=0.02, until=4.0, max_in_flight=1000)
    intended = [t for t in ArrivalPlan(100.0, 0.0, random.Random(3)).due(4.0) if t < 4.0]
    sent = sorted(samples.ok_ref)
    assert [t for t in sent if t < 4.0] == intended  # every arrival went out, timed from its slot
    assert len(sent) - len(intended) <= 1  # plus the one due when the loop saw the stop
    stats = summarize(samples, 0.0, 4.0, by_intended=True)
    assert stats.latency is not None
    assert stats.latency.p50 > 1.0  # half the calls waited > 1 s behind the server's backlog
    assert stats.latency.max > 3.0
    assert stats.qps == pytest.approx(50.0, rel=0.05)  # what the server did


def test_the_in_flight_limit_delays_sends_but_not_the_clock_of_latency() -> None:
    unbounded = _open(rate=100.0, service=0.02, until=2.0, max_in_flight=1000)
    one_at_a_time = _open(rate=100.0, service=0.02, until=2.0, max_in_flight=1)
    latencies = [
        sorted(d - r for r, d in zip(s.ok_ref, s.ok_done, strict=True))
        for s in (unbounded, one_at_a_time)
    ]
    assert latencies[0] == pytest.approx(latencies[1])


def test_a_closed_loop_sees_only_the_service_time() -> None:
    # The same overloaded server, driven by one closed-loop worker: the backlog never forms,
    # which is the coordinated omission an open loop avoids.
    clock = VirtualClock()
    server = FifoServer(clock, 0.02)
    samples = Samples()
    loop = closed_loop(
        server.send, 1, samples, lambda: clock.now < 4.0, clock=clock.time, sleep=clock.sleep
    )
    asyncio.run(clock.drive(loop))
    stats = summarize(samples, 0.0, 4.0, by_intended=False)
    assert stats.latency is not None
    assert stats.latency.max == pytest.approx(0.02)
    assert stats.qps == pytest.approx(50.0, rel=0.01)


def test_failed_calls_are_counted_by_kind_and_the_loop_goes_on() -> None:
    clock = VirtualClock()
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        mine = calls
        await clock.sleep(0.01)
        if mine % 4 == 0:
            raise ServiceUnavailable("queue full", status_code=503)

    samples = Samples()
    loop = closed_loop(
        flaky, 2, samples, lambda: clock.now < 1.0, clock=clock.time, sleep=clock.sleep
    )
    asyncio.run(clock.drive(loop))
    stats = summarize(samples, 0.0, 2.0, by_intended=False)
    assert stats.errors["HTTP 503"] == calls // 4
    assert stats.requests == calls - calls // 4


async def _nothing() -> None:
    return None


def test_the_loops_refuse_bad_levels() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        asyncio.run(closed_loop(_nothing, 0, Samples(), lambda: False))
    with pytest.raises(ValueError, match="max_in_flight"):
        asyncio.run(open_loop(_nothing, 10.0, Samples(), lambda: False, max_in_flight=0))
