"""A small closed-loop HTTP load generator (asyncio + aiohttp, several processes) for machines
without wrk: POSTs one prepared OIP body and records latencies."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import statistics
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["LoadResult", "closed_loop"]


@dataclass
class LoadResult:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float


async def _client(
    url: str, body: bytes, headers: dict[str, str], conns: int, seconds: float
) -> tuple[list[float], int]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=conns)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal errors
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                        continue
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(conns)))
    return latencies, errors


def _process(args: tuple[str, bytes, dict[str, str], int, float], queue: Any) -> None:
    queue.put(asyncio.run(_client(*args)))


def closed_loop(
    url: str,
    body: bytes,
    headers: dict[str, str],
    concurrency: int,
    seconds: float,
    processes: int = 4,
) -> LoadResult:
    """``concurrency`` connections spread over ``processes``, each sending as soon as answered."""
    processes = max(1, min(processes, concurrency))
    per = [
        concurrency // processes + (1 if i < concurrency % processes else 0)
        for i in range(processes)
    ]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_process, args=((url, body, headers, n, seconds), queue)) for n in per
    ]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    lat = sorted(x for lats, _ in results for x in lats)
    errors = sum(e for _, e in results)
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan")
    return LoadResult(
        concurrency,
        len(lat),
        errors,
        seconds,
        len(lat) / seconds,
        statistics.median(lat) * 1e3 if lat else float("nan"),
        p99 * 1e3,
    )
