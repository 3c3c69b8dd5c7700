"""A closed loop of keep-alive HTTP/1.1 connections spread over several processes, so that on a
16-core GPU host the generator is never the limit (wrk is not installed there, and one Python
process tops out at a few thousand calls a second).

Each process opens its connections, says it is ready and waits; the parent then sets one start
time for all (now + warm-up) and each connection sends its next request as soon as the previous
answer arrived, cycling through the prepared requests from its own offset. A request counts
when its answer arrives inside ``[start, start + window)``: rps is those answers over the window,
latencies are theirs. Each process reports its own CPU time over the window, read by callbacks
its event loop runs at the window's ends; the parent runs ``window`` (a context manager: server
CPU, GPU sampling) over the same interval. Answers are read by Content-Length (eas-server always
sends it); a non-200 answer is an error, and so is a dropped connection (reconnected once).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import queue
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from .bodies import Body

__all__ = ["LoadResult", "closed_loop", "http_messages"]


@dataclass(frozen=True)
class LoadResult:
    """One closed-loop run (latencies in ms; generator CPU in cores)."""

    concurrency: int
    processes: int
    window_s: float
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    generator_cores: float
    first_error: str


def http_messages(url: str, path: str, bodies: Sequence[Body]) -> list[bytes]:
    """Each body as one complete HTTP/1.1 POST to ``url`` + ``path``, ready to write."""
    netloc = urlsplit(url).netloc
    out = []
    for body in bodies:
        head = "".join(f"{k}: {v}\r\n" for k, v in body.headers.items())
        start = f"POST {path} HTTP/1.1\r\nHost: {netloc}\r\n{head}"
        out.append(f"{start}Content-Length: {len(body.data)}\r\n\r\n".encode() + body.data)
    return out


def _content_length(head: bytes) -> int:
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at < 0:
        raise ConnectionError("answer without Content-Length")
    end = lower.find(b"\r\n", at + 2)
    return int(lower[at + 17 : end])


class _Child:
    """The work of one generator process (built and run inside it)."""

    def __init__(self, url: str, messages: list[bytes], conns: int, offset: int, window_s: float):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.messages, self.conns, self.offset, self.window_s = messages, conns, offset, window_s
        self.latencies = array("d")
        self.errors = 0
        self.first_error = ""
        self.cpu: dict[str, float] = {}
        self.t0 = self.t1 = 0.0

    def _error(self, text: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = text

    async def _connection(self, index: int, streams: tuple[Any, Any]) -> None:
        reader, writer = streams
        messages, n, k = self.messages, len(self.messages), self.offset + index
        retried = False
        while True:
            sent = time.monotonic()
            if sent >= self.t1:
                break
            try:
                writer.write(messages[k % n])
                head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(_content_length(head))
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                if self.t0 <= time.monotonic() < self.t1:
                    self._error(f"{type(exc).__name__}: {exc}")
                writer.close()
                if retried:
                    return
                retried = True
                reader, writer = await asyncio.open_connection(self.host, self.port)
                continue
            done = time.monotonic()
            k += 1
            if self.t0 <= done < self.t1:
                if head[9:12] == b"200":
                    self.latencies.append(done - sent)
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
        self.t1 = self.t0 + self.window_s
        loop.call_at(self.t0, lambda: self.cpu.__setitem__("start", time.process_time()))
        loop.call_at(self.t1, lambda: self.cpu.__setitem__("end", time.process_time()))
        await asyncio.gather(*(self._connection(i, s) for i, s in enumerate(streams)))


def _child_main(
    url: str,
    messages: list[bytes],
    conns: int,
    offset: int,
    window_s: float,
    ready: Any,
    go: Any,
    start: Any,
    results: Any,
) -> None:
    child = _Child(url, messages, conns, offset, window_s)
    runner: Any = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    try:
        runner(child.run(ready, go, start))
    except Exception as exc:  # report it: the parent must not wait for a dead child
        results.put((b"", 1, 0.0, f"generator process failed: {exc!r}"))
        ready.put("failed")
        return
    cpu = child.cpu.get("end", time.process_time()) - child.cpu.get("start", 0.0)
    results.put((child.latencies.tobytes(), child.errors, cpu, child.first_error))


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def closed_loop(
    url: str,
    messages: list[bytes],
    concurrency: int,
    *,
    processes: int,
    warmup_s: float,
    window_s: float,
    window: contextlib.AbstractContextManager[Any] | None = None,
    timeout_s: float = 30.0,
) -> LoadResult:
    """``concurrency`` connections over ``processes`` processes, measured over ``window_s``
    after ``warmup_s``; ``window`` is entered and exited at the window's ends."""
    procs_n = max(1, min(processes, concurrency))
    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    start = ctx.RawValue("d", 0.0)
    procs = []
    offset = 0
    for conns in _split(concurrency, procs_n):
        args = (url, messages, conns, offset, window_s, ready, go, start, results)
        procs.append(ctx.Process(target=_child_main, args=args, daemon=True))
        offset += conns
    for p in procs:
        p.start()
    try:
        for _ in procs:
            if ready.get(timeout=60) != "ready":
                raise RuntimeError(results.get(timeout=5)[3])
        start.value = time.time() + warmup_s
        go.set()
        time.sleep(max(0.0, start.value - time.time()))
        with window if window is not None else contextlib.nullcontext():
            time.sleep(max(0.0, start.value + window_s - time.time()))
        got = [results.get(timeout=timeout_s + 10) for _ in procs]
    except queue.Empty:
        raise RuntimeError("a load generator process did not report in time") from None
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    lat = np.sort(np.concatenate([np.frombuffer(raw, dtype=np.float64) for raw, *_ in got]))
    n = len(lat)

    def pct(q: float) -> float:
        return float(lat[min(n - 1, int(q * n))]) * 1e3 if n else float("nan")

    return LoadResult(
        concurrency=concurrency,
        processes=procs_n,
        window_s=window_s,
        requests=n,
        errors=sum(e for _, e, _, _ in got),
        rps=n / window_s,
        p50_ms=pct(0.5),
        p90_ms=pct(0.9),
        p99_ms=pct(0.99),
        generator_cores=sum(c for _, _, c, _ in got) / window_s,
        first_error=next((f for *_, f in got if f), ""),
    )
