"""Run the steps of a benchmark against a target: warm up, scrape, measure, scrape, summarize.

Per step: the generator starts the load; after ``warmup`` the instances' ``/metrics`` are
scraped and the window opens (at the scrape's midpoint, the best guess of when the servers read
their counters); after ``duration`` they are scraped again and the window closes; the generator
stops sending, the calls in flight finish (or are cancelled after the call timeout), and the
step's client, server and generator figures are computed over the window. Setting ``stop`` ends
the current step's window early (its figures are kept, marked interrupted) and skips the rest.

The generator is the load loops in this process (``LocalGenerator``) or ``--processes N`` of
them (``ProcessPool``); either way only this process scrapes, so the server side is read once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from ._generator import Clock, Generator, LocalGenerator
from ._heap import trim_heap
from ._prom import ServerSnapshot, server_stats
from ._report import BenchReport, Step, StepResult
from ._scrape import Scraper
from ._stats import generator_stats
from ._window import merge_parts

__all__ = ["Progress", "Target", "run_steps"]

Progress = Callable[[int, float], None]
"""Called about ten times a second with the step's index and the seconds since it started."""

_TICK_S = 0.1


class Target(Protocol):
    """What the runner drives: one call, and the instances the calls reach."""

    def send(self) -> Awaitable[None]: ...

    async def instances(self) -> list[str]: ...


async def _until(
    deadline: float, stop: asyncio.Event, tick: Callable[[], None], clock: Clock
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
    scraper: Scraper, urls: Sequence[str], clock: Clock
) -> tuple[dict[str, ServerSnapshot], list[str], float]:
    before = clock()
    snapshots, failed = await scraper.scrape(urls)
    return snapshots, failed, (before + clock()) / 2


async def _step(
    target: Target,
    generator: Generator,
    step: Step,
    index: int,
    *,
    warmup: float,
    duration: float,
    scraper: Scraper,
    stop: asyncio.Event,
    progress: Progress,
) -> StepResult | None:
    clock = generator.clock
    began = await generator.start(step)

    def tick() -> None:
        generator.check()
        progress(index, max(0.0, clock() - began))

    try:
        if not await _until(began + warmup, stop, tick, clock):
            await generator.abort()
            return None  # stopped during warmup: nothing measured
        urls = await target.instances()
        before, failed_before, start = await _scrape(scraper, urls, clock)
        generator.open()
        interrupted = not await _until(start + duration, stop, tick, clock)
        after, failed_after, end = await _scrape(scraper, urls, clock)
        load = await generator.close(start, end)
    except BaseException:
        await generator.abort()
        raise
    client = merge_parts(load.parts, start, end)
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
        generator=generator_stats(load.cpu_s, end - start, calls),
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
    clock: Clock = time.perf_counter,
    generator: Generator | None = None,
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
        clock: the monotonic clock of the samples, of the default generator.
        generator: makes the calls (default: ``target.send`` in this process, with
            ``drain_timeout`` and ``clock``); its ``clock`` times the steps.

    Returns:
        ``report``.
    """
    stop = stop or asyncio.Event()
    generator = generator or LocalGenerator(target.send, drain_timeout=drain_timeout, clock=clock)
    own = scraper is None
    scraper = scraper or Scraper()
    try:
        for index, step in enumerate(steps):
            if stop.is_set():
                report.interrupted = True
                break
            result = await _step(
                target,
                generator,
                step,
                index,
                warmup=report.warmup_s,
                duration=report.duration_s,
                scraper=scraper,
                stop=stop,
                progress=progress or (lambda _i, _s: None),
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
