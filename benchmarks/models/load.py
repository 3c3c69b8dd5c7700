"""A closed loop of keep-alive HTTP/1.1 connections over many model paths, spread over several
processes, in two modes: a fixed window, and a replay of exactly the requests a window answered.

The traffic is a sequence of prepared requests (``Traffic``: each a complete HTTP message naming
its model in the path). With ``C`` connections, connection ``g`` sends positions ``g``, ``g + C``,
``g + 2C`` ... of the sequence, so the requests in flight at any moment are ``C`` independent
draws (a sequence of i.i.d. Zipf draws stays i.i.d. in flight; walking one shared list from
neighbouring offsets, as ``benchmarks.serving.gpu_load`` does, would put the same request in
flight on two connections whose pace drifts apart).

- ``window``: after ``warmup_s`` of load, the answers that arrive inside ``[t0, t0 + window_s)``
  count; each process also returns the sequence positions of those answers.
- ``replay``: each process's connections pull the given positions in order from one list of the
  process (all connections stay busy until the list is empty, so the tail at the end is about
  one latency); they are sent from ``traffic`` (the same rows for one model, say). Before ``t0``
  the connections warm up on the process's positions, cycled; the time is from ``t0`` to the last
  answer.

A request counts when its answer is a 200; anything else (another status, a dropped connection,
reconnected once) is an error. Each process reports its CPU time over the measured part; the
parent reads the server's (its process tree) and the whole machine's over the same interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import queue
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt

from autoai.testing import machine_busy_seconds, tree_cpu_seconds

__all__ = ["LoadResult", "Traffic", "closed_loop"]

Positions = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Traffic:
    """Prepared requests (complete HTTP/1.1 messages) and the order they are sent in:
    ``sequence[i]`` is the index into ``messages`` of the traffic's ``i``-th request."""

    messages: list[bytes]
    sequence: npt.NDArray[np.int32]


@dataclass(frozen=True)
class LoadResult:
    """One closed-loop run (latencies in ms, CPU in cores over the measured seconds)."""

    mode: str  # "window" or "replay"
    concurrency: int
    processes: int
    seconds: float  # the window, or the replay's time to its last answer
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    generator_cores: float
    server_cores: float
    other_cores: float  # the rest of the machine: well above 0, the numbers are distorted
    first_error: str
    positions: list[Positions] = field(repr=False)  # per process: sequence positions answered

    @property
    def all_positions(self) -> Positions:
        return np.sort(np.concatenate(self.positions)) if self.positions else np.zeros(0, np.int64)


def _content_length(head: bytes) -> int:
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at < 0:
        raise ConnectionError("answer without Content-Length")
    end = lower.find(b"\r\n", at + 2)
    return int(lower[at + 17 : end])


class _Child:
    """The work of one generator process (built and run inside it)."""

    def __init__(
        self,
        url: str,
        traffic: Traffic,
        conns: int,
        first: int,
        concurrency: int,
        window_s: float | None,
        items: Positions | None,
    ):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.traffic, self.conns, self.first, self.concurrency = traffic, conns, first, concurrency
        self.window_s, self.items, self.next_item = window_s, items, 0
        self.latencies = array("d")
        self.answered = array("q")
        self.errors = 0
        self.first_error = ""
        self.cpu_start = self.cpu_end = 0.0
        self.t0 = self.t1 = self.last = 0.0

    def _error(self, text: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = text

    def _next(self, g: int, j: int) -> int:
        """The sequence position connection ``g`` sends as its ``j``-th request; -1: done."""
        if self.items is None:
            if time.monotonic() >= self.t1:
                return -1
            return (g + self.concurrency * j) % len(self.traffic.sequence)
        if time.monotonic() < self.t0:  # warm-up: the process's positions, cycled
            return int(self.items[(g + self.concurrency * j) % len(self.items)])
        if self.next_item >= len(self.items):
            return -1
        self.next_item += 1
        return int(self.items[self.next_item - 1])

    async def _connection(self, g: int, streams: tuple[Any, Any]) -> None:
        reader, writer = streams
        messages, sequence = self.traffic.messages, self.traffic.sequence
        retried = False
        j = 0
        while (pos := self._next(g, j)) >= 0:
            j += 1
            sent = time.monotonic()
            try:
                writer.write(messages[sequence[pos]])
                head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(_content_length(head))
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                if sent >= self.t0:
                    self._error(f"{type(exc).__name__}: {exc}")
                writer.close()
                if retried:
                    return
                retried = True
                reader, writer = await asyncio.open_connection(self.host, self.port)
                continue
            done = time.monotonic()
            counts = sent >= self.t0 if self.items is not None else self.t0 <= done < self.t1
            if counts:
                self.last = max(self.last, done)
                if head[9:12] == b"200":
                    self.latencies.append(done - sent)
                    self.answered.append(pos)
                else:
                    self._error(head.split(b"\r\n", 1)[0].decode(errors="replace"))
        writer.close()

    async def run(self, ready: Any, go: Any, start: Any) -> None:
        loop = asyncio.get_running_loop()
        streams = [await asyncio.open_connection(self.host, self.port) for _ in range(self.conns)]
        ready.put("ready")
        while not go.is_set():
            await asyncio.sleep(0.005)
        # the parent's start time (epoch seconds) on this process's monotonic clock
        self.t0 = start.value - (time.time() - time.monotonic())
        self.t1 = self.t0 + (self.window_s or 0.0)
        loop.call_at(self.t0, lambda: setattr(self, "cpu_start", time.process_time()))
        if self.items is None:
            loop.call_at(self.t1, lambda: setattr(self, "cpu_end", time.process_time()))
        await asyncio.gather(*(self._connection(self.first + i, s) for i, s in enumerate(streams)))
        if self.items is not None:
            self.cpu_end = time.process_time()


def _child_main(args: tuple[Any, ...], ready: Any, go: Any, start: Any, results: Any) -> None:
    child = _Child(*args)
    runner: Any = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    try:
        runner(child.run(ready, go, start))
    except Exception as exc:  # report it: the parent must not wait for a dead child
        results.put((b"", b"", 1, 0.0, 0.0, f"generator process failed: {exc!r}"))
        ready.put("failed")
        return
    elapsed = child.last - child.t0 if child.last else 0.0
    cpu = max(0.0, child.cpu_end - child.cpu_start)
    results.put(
        (child.latencies.tobytes(), child.answered.tobytes(), child.errors, cpu, elapsed,
         child.first_error)
    )  # fmt: skip


def _cpu_since(
    server_pid: int, server0: float, machine0: float, own0: float
) -> tuple[float, float]:
    """CPU seconds since the readings given: the server's tree, and the machine's but this
    process's."""
    server_s = tree_cpu_seconds(server_pid) - server0
    return server_s, machine_busy_seconds() - machine0 - (time.process_time() - own0)


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def closed_loop(
    url: str,
    traffic: Traffic,
    concurrency: int,
    *,
    processes: int,
    warmup_s: float,
    server_pid: int,
    window_s: float | None = None,
    replay: Sequence[Positions] | None = None,
    timeout_s: float = 600.0,
) -> LoadResult:
    """Run ``traffic`` against ``url`` with ``concurrency`` connections over ``processes``
    processes: for ``window_s`` after ``warmup_s`` (mode ``window``), or, with ``replay`` (one
    array of sequence positions per process, as a window run's ``positions``), exactly those
    requests (mode ``replay``).

    Raises:
        RuntimeError: a generator process failed or did not report within ``timeout_s``.
    """
    if (window_s is None) == (replay is None):
        raise ValueError("give exactly one of window_s and replay")
    procs_n = max(1, min(processes, concurrency))
    if replay is not None and len(replay) != procs_n:
        raise ValueError(f"replay has {len(replay)} position lists for {procs_n} processes")
    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    start = ctx.RawValue("d", 0.0)
    procs = []
    first = 0
    for p, conns in enumerate(_split(concurrency, procs_n)):
        items = replay[p] if replay is not None else None
        args = (url, traffic, conns, first, concurrency, window_s, items)
        procs.append(
            ctx.Process(target=_child_main, args=(args, ready, go, start, results), daemon=True)
        )
        first += conns
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            if ready.get(timeout=60) != "ready":
                raise RuntimeError(results.get(timeout=5)[-1])
        start.value = time.time() + warmup_s
        go.set()
        time.sleep(max(0.0, start.value - time.time()))
        server0, machine0, own0 = (
            tree_cpu_seconds(server_pid), machine_busy_seconds(), time.process_time()
        )  # fmt: skip
        if window_s is not None:
            time.sleep(max(0.0, start.value + window_s - time.time()))
            measured_s = window_s
            server_s, machine_s = _cpu_since(server_pid, server0, machine0, own0)
            got = [results.get(timeout=timeout_s) for _ in procs]
        else:
            got = [results.get(timeout=timeout_s) for _ in procs]
            measured_s = max(time.time() - start.value, 1e-9)
            server_s, machine_s = _cpu_since(server_pid, server0, machine0, own0)
    except queue.Empty:
        raise RuntimeError("a load generator process did not report in time") from None
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    lat = np.sort(np.concatenate([np.frombuffer(g[0], dtype=np.float64) for g in got]))
    positions = [np.frombuffer(g[1], dtype=np.int64).copy() for g in got]
    n = len(lat)
    seconds = window_s if window_s is not None else max(g[4] for g in got)
    generator_s = sum(g[3] for g in got)

    def pct(q: float) -> float:
        return float(lat[min(n - 1, int(q * n))]) * 1e3 if n else float("nan")

    return LoadResult(
        mode="window" if window_s is not None else "replay",
        concurrency=concurrency,
        processes=procs_n,
        seconds=seconds,
        requests=n,
        errors=sum(g[2] for g in got),
        rps=n / seconds if seconds else 0.0,
        p50_ms=pct(0.5),
        p90_ms=pct(0.9),
        p99_ms=pct(0.99),
        generator_cores=generator_s / seconds if seconds else 0.0,
        server_cores=server_s / measured_s,
        other_cores=max(0.0, machine_s - server_s - generator_s) / measured_s,
        first_error=next((g[5] for g in got if g[5]), ""),
        positions=positions,
    )
