"""Run the steps of a benchmark against a target: warm up, scrape, measure, scrape, summarize.

Per step: the load loop starts; after ``warmup`` the instances' ``/metrics`` are scraped and
the window opens (at the scrape's midpoint, the best guess of when the servers read their
counters); after ``duration`` they are scraped again and the window closes; the loop stops
sending, the calls in flight finish (or are cancelled after the call timeout), and the step's
client, server and generator figures are computed over the window. Setting ``stop`` ends the
current step's window early (its figures are kept, marked interrupted) and skips the rest.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from ._heap import map_big_blocks, trim_heap
from ._load import closed_loop, open_loop
from ._prom import ServerSnapshot, server_stats
from ._report import BenchReport, Step, StepResult
from ._scrape import Scraper
from ._stats import Samples, generator_stats, summarize

__all__ = ["Progress", "Target", "run_steps"]

Progress = Callable[[int, float], None]
"""Called about ten times a second with the step's index and the seconds since it started."""

_TICK_S = 0.1


class Target(Protocol):
    """What the runner drives: one call, and the instances the calls reach."""

    def send(self) -> Awaitable[None]: ...

    async def instances(self) -> list[str]: ...


async def _until(
    deadline: float, stop: asyncio.Event, tick: Callable[[], None], clock: Callable[[], float]
) -> bool:
    """Wait until ``deadline``; False if ``stop`` was set first."""
    while True:
        tick()
        now = clock()
        if now >= deadline:
            return True
        if stop.is_set():
            return False
        await asyncio.sleep(min(_TICK_S, deadline - now))


async def _scrape(
    scraper: Scraper, urls: Sequence[str], clock: Callable[[], float]
) -> tuple[dict[str, ServerSnapshot], list[str], float]:
    before = clock()
    snapshots, failed = await scraper.scrape(urls)
    return snapshots, failed, (before + clock()) / 2


async def _finish(task: asyncio.Task[None], timeout: float) -> None:
    """Let the load loop end (its calls in flight finish) for ``timeout`` s, then cancel it."""
    done, _ = await asyncio.wait({task}, timeout=timeout) if timeout > 0 else (set(), set())
    if not done:
        task.cancel()
        await asyncio.wait({task})
    elif (exc := task.exception()) is not None:
        raise exc


async def _step(
    target: Target,
    step: Step,
    index: int,
    *,
    warmup: float,
    duration: float,
    drain_timeout: float,
    scraper: Scraper,
    stop: asyncio.Event,
    progress: Progress,
    clock: Callable[[], float],
) -> StepResult | None:
    samples = Samples()
    sending = True

    def running() -> bool:
        return sending

    if step.concurrency is not None:
        load = closed_loop(target.send, step.concurrency, samples, running, clock=clock)
    else:
        assert step.rate is not None
        load = open_loop(
            target.send, step.rate, samples, running, max_in_flight=step.max_in_flight, clock=clock
        )
    began = clock()
    task = asyncio.get_running_loop().create_task(load)

    def tick() -> None:
        progress(index, clock() - began)

    try:
        if not await _until(began + warmup, stop, tick, clock):
            await _finish(task, 0.0)
            return None  # stopped during warmup: nothing measured
        urls = await target.instances()
        before, failed_before, start = await _scrape(scraper, urls, clock)
        cpu_start = time.process_time()
        interrupted = not await _until(start + duration, stop, tick, clock)
        after, failed_after, end = await _scrape(scraper, urls, clock)
        cpu = time.process_time() - cpu_start
    except BaseException:
        sending = False
        await _finish(task, 0.0)
        raise
    sending = False
    await _finish(task, drain_timeout)
    client = summarize(samples, start, end, by_intended=step.rate is not None)
    server = (
        server_stats(before, after, end - start, failed_before + failed_after) if urls else None
    )
    calls = client.requests + client.error_count
    return StepResult(
        step=step,
        window_s=end - start,
        interrupted=interrupted,
        client=client,
        server=server,
        generator=generator_stats(cpu, end - start, calls),
    )


async def run_steps(
    target: Target,
    steps: Sequence[Step],
    report: BenchReport,
    *,
    stop: asyncio.Event | None = None,
    progress: Progress | None = None,
    drain_timeout: float = 6.0,
    scraper: Scraper | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> BenchReport:
    """Run ``steps`` one after the other, appending each step's result to ``report.steps``.

    Args:
        target: the calls to make and the instances they reach.
        steps: the load levels.
        report: where results go (its ``warmup_s`` and ``duration_s`` are used per step).
        stop: set it to end the current step now and skip the rest (``report.interrupted``).
        progress: called with (step index, seconds since the step began) while it runs.
        drain_timeout: how long the calls in flight may take to finish after a window.
        scraper: reads ``/metrics`` (default: a new one, closed at the end).
        clock: the monotonic clock of the samples.

    Returns:
        ``report``.
    """
    stop = stop or asyncio.Event()
    map_big_blocks()  # each step's samples and their copies: mapped, and unmapped when freed
    own = scraper is None
    scraper = scraper or Scraper()
    try:
        for index, step in enumerate(steps):
            if stop.is_set():
                report.interrupted = True
                break
            result = await _step(
                target,
                step,
                index,
                warmup=report.warmup_s,
                duration=report.duration_s,
                drain_timeout=drain_timeout,
                scraper=scraper,
                stop=stop,
                progress=progress or (lambda _i, _s: None),
                clock=clock,
            )
            trim_heap()  # the step's samples and their copies are freed by now
            if result is not None:
                report.steps.append(result)
            if result is None or result.interrupted:
                report.interrupted = True
                break
    finally:
        if own:
            await scraper.aclose()
    return report
