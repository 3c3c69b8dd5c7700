"""The two load loops, on asyncio: closed (N workers, each sends when its last call returned) and
open (Poisson arrivals at a fixed rate, each call timed from its intended send time).

Both call ``send()`` (one inference through whatever target the runner built) and append every
completion to a ``Samples``; they know nothing about windows, servers or reports. The clock and
the sleep are arguments so that tests can drive the open loop on a virtual clock.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import Awaitable, Callable

from ._schedule import ArrivalPlan
from ._stats import Samples, error_kind

__all__ = ["CANCELLED", "NOT_SENT", "Clock", "Send", "Sleep", "closed_loop", "open_loop"]

Send = Callable[[], Awaitable[object]]
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

CANCELLED = "cancelled"
"""Error kind of an open-loop call still in flight when the loop was cancelled (the drain
after a window took longer than the call timeout, or a second Ctrl-C)."""
NOT_SENT = "not sent"
"""Error kind of an arrival the open loop never sent before it was cancelled (the in-flight
limit held it back)."""

_ERROR_PAUSE_S = 0.001
"""A closed-loop worker whose call failed waits this long before the next one, so that an
instance refusing connections does not turn the generator into a busy loop."""


async def closed_loop(
    send: Send,
    concurrency: int,
    samples: Samples,
    running: Callable[[], bool],
    *,
    clock: Clock = time.perf_counter,
    sleep: Sleep = asyncio.sleep,
) -> None:
    """Run ``concurrency`` workers that call ``send`` back to back while ``running()``.

    Each call's latency runs from its send to its completion. Returns once every worker saw
    ``running()`` false after its last call.

    Raises:
        ValueError: ``concurrency`` < 1.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    ok, failed = samples.ok, samples.error

    async def worker() -> None:
        while running():
            ref = clock()
            try:
                await send()
            except Exception as exc:  # counted by kind, never raised: the run goes on
                failed(ref, clock(), error_kind(exc))
                await sleep(_ERROR_PAUSE_S)
            else:
                ok(ref, clock())

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def open_loop(
    send: Send,
    rate: float,
    samples: Samples,
    running: Callable[[], bool],
    *,
    max_in_flight: int = 256,
    clock: Clock = time.perf_counter,
    sleep: Sleep = asyncio.sleep,
    rng: random.Random | None = None,
) -> None:
    """Send at the arrivals of a Poisson process of ``rate`` per second while ``running()``.

    A call's latency runs from its *intended* time. When ``max_in_flight`` calls are
    outstanding, the next arrival waits for one to finish: it is sent late and its wait counts
    in its latency (the limit bounds the generator's memory and sockets, not what is measured).
    Once ``running()`` is false, the arrivals intended until then are still sent, and the loop
    returns when every call has finished. If it is cancelled first, the calls in flight count as
    ``CANCELLED`` errors and the arrivals not sent yet as ``NOT_SENT``.

    Raises:
        ValueError: ``rate`` is not > 0 or ``max_in_flight`` < 1.
    """
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
    plan = ArrivalPlan(rate, clock(), rng)
    slots = asyncio.Semaphore(max_in_flight)
    pending: set[asyncio.Task[None]] = set()
    backlog: collections.deque[float] = collections.deque()
    ok, failed = samples.ok, samples.error
    loop = asyncio.get_running_loop()

    async def one(intended: float) -> None:
        try:
            await send()
        except asyncio.CancelledError:
            failed(intended, clock(), CANCELLED)
            raise
        except Exception as exc:  # counted by kind, never raised: the run goes on
            failed(intended, clock(), error_kind(exc))
        else:
            ok(intended, clock())
        finally:
            slots.release()

    async def flush() -> None:
        while backlog:
            await slots.acquire()
            task = loop.create_task(one(backlog.popleft()))
            pending.add(task)  # referenced until done
            task.add_done_callback(pending.discard)

    try:
        while running():
            backlog.extend(plan.due(clock()))
            await flush()
            await sleep(max(0.0, plan.next_at - clock()))
        # Every arrival intended before the stop is sent, however late: dropping the ones the
        # in-flight limit held back would hide exactly the slow part of the run.
        backlog.extend(plan.due(clock()))
        await flush()
        if pending:
            await asyncio.gather(*pending)
    except asyncio.CancelledError:
        for intended in backlog:
            failed(intended, clock(), NOT_SENT)
        backlog.clear()
        raise
