"""The dynamic batcher: Triton's semantics, made work-conserving.

- Batches count rows, not requests; a request larger than ``max_batch_size`` is split into chunks
  that run as their own batches and its answer is reassembled.
- Requests whose non-batch dims differ (e.g. sequence length) never share a batch, unless the
  processor declares padding safe.
- A batch is formed only when a worker is free. It fires at once when it is full; otherwise it
  waits for more rows, but never longer than ``max_delay`` counted from the *oldest* queued request,
  and never when no more rows are expected: the batcher tracks the demand it saw at the last
  launch (rows queued and running), so a lone client is served without delay while 32 clients
  get batches of 32.
- A bounded queue (``QueueFull``), per-request queue timeouts (``QueueTimeout``), priority levels
  (1 is highest), monotonic clocks. Runtime calls go to dedicated worker threads, one per worker;
  or, with ``inline`` (one worker on a CPU whose cores the runtime takes anyway: ``_cpu.py``), to
  a callback on the event loop's thread, which saves two thread wake-ups per batch. A failing
  batch is retried in halves so that only the requests that fail on their own get the error.

Scheduling runs on the event loop thread and is driven by events rather than by a task of its own:
a new request, a finished batch and a timer (the oldest request's delay, the nearest queue
timeout) each call ``_pump``, which launches every batch that should fire. A worker hands its
result back with one ``call_soon_threadsafe``; no task or executor future is made per batch.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .._errors import (
    EasServerError,
    InvalidInput,
    ProcessorError,
    QueueFull,
    QueueTimeout,
    ShuttingDown,
)
from ._merge import Padding, group_key, merge, rows_of, split_outputs, split_rows

__all__ = ["BatchObserver", "BatchResult", "DynamicBatcher", "RunFn"]

log = logging.getLogger("eas_server.batching")

RunFn = Callable[[dict[str, np.ndarray], int, frozenset[str] | None], Mapping[str, np.ndarray]]
"""``run(inputs, worker_index, outputs) -> outputs``, called on a worker thread; ``outputs`` names
what the batch's requests asked for (None: all), so a runtime need not fetch the rest."""


class BatchObserver(Protocol):
    """Receives what the batcher does (metrics and statistics)."""

    def on_queue_depth(self, depth: int) -> None: ...

    def on_batch(self, rows: int, trigger: str, compute_s: float, ok: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class BatchResult:
    """A request's outputs and where its time went."""

    outputs: dict[str, np.ndarray]
    queue_s: float
    compute_s: float
    batch_rows: int


@dataclass(eq=False, slots=True)
class _Request:
    """Counts a request's chunks still in the queue (admission counts requests, not chunks)."""

    queued_parts: int


@dataclass(eq=False, slots=True)
class _Entry:
    inputs: Mapping[str, np.ndarray]
    rows: int
    group: object
    future: asyncio.Future[BatchResult]
    enqueued: float
    deadline: float | None
    level: int
    request: _Request
    chunk: bool = False
    queued: bool = field(default=True)
    outputs: frozenset[str] | None = None


_Outcome = dict[str, np.ndarray] | Exception


@dataclass(slots=True)
class _Job:
    batch: list[_Entry]
    rows: int
    trigger: str
    started: float


class DynamicBatcher:
    """Queue requests and run them in batches on ``workers`` threads.

    Args:
        run: the processor's run function.
        max_batch_size: most rows per batch; larger requests are split.
        max_delay_s: longest wait for a batch to fill, from the oldest queued request.
        max_queue_size: most queued requests (a split request counts once).
        workers: runtime threads (each with its own session in the processor).
        batchable: False for models without a batch dim: every request runs alone, unsplit.
        merge: False runs every request alone (batching off), still split to ``max_batch_size``.
        priority_levels: number of levels; requests say 1 (highest) .. levels, 0 = default.
        default_priority: level of requests that give none.
        padding: where the processor declares padding safe.
        observer: metrics sink.
        inline: run batches on the event loop's thread (``workers`` must be 1): the loop does
            nothing else while a batch runs, and the requests that arrive meanwhile form the
            next batch.

        ahead: with worker threads, let one full batch wait ahead of busy workers: a worker
            that finishes takes it at once instead of idling until the event loop has handed
            back the results and formed the next batch (on a GPU that round trip is
            milliseconds under load, and the device idles through it). Only a full batch goes
            ahead, so under light load batches still form as late and as full as they can. The
            price: its requests are committed early, so a later request of higher priority can
            overtake them by at most that one batch, and their queue timeout stops at that point.
    """

    def __init__(
        self,
        run: RunFn,
        *,
        max_batch_size: int = 32,
        max_delay_s: float = 0.005,
        max_queue_size: int = 256,
        workers: int = 1,
        batchable: bool = True,
        merge: bool = True,
        priority_levels: int = 2,
        default_priority: int | None = None,
        padding: Padding | None = None,
        observer: BatchObserver | None = None,
        inline: bool = False,
        ahead: bool = False,
    ):
        if inline and workers != 1:
            raise ValueError("inline runs one batch at a time: workers must be 1")
        if max_batch_size < 1 or workers < 1 or max_queue_size < 1 or priority_levels < 1:
            raise ValueError(
                "max_batch_size, workers, max_queue_size and priority_levels must be >= 1"
            )
        self._run = run
        self.max_batch_size = max_batch_size if batchable else 1
        self.max_delay_s = max(0.0, max_delay_s)
        self.max_queue_size = max_queue_size
        self.workers = workers
        self.batchable = batchable
        self.merge = merge and batchable
        self.priority_levels = priority_levels
        self.default_priority = default_priority or priority_levels
        self._padding = padding
        self._observer = observer
        self.inline = inline
        self._levels: list[deque[_Entry]] = [deque() for _ in range(priority_levels)]
        self._queued = 0
        self._queued_requests = 0
        self._queued_rows = 0
        self._with_deadline = 0
        self._free = workers
        self._ahead = 1 if ahead and not inline else 0
        """Full batches that may wait for a busy worker (``_free`` goes down to ``-_ahead``)."""
        self._inflight_rows = 0
        self._demand = 1
        self._closing = False
        self._pumping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: asyncio.Event | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------------------ public

    @property
    def queue_depth(self) -> int:
        """Requests waiting (a split request counts once until all its chunks have left)."""
        return self._queued_requests

    @property
    def busy(self) -> bool:
        """Requests queued or running."""
        return self._queued > 0 or self._free < self.workers

    def start(self) -> None:
        """Bind to the running event loop and start the worker threads (idempotent)."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        self._idle.set()
        if self.inline:
            return
        for index in range(self.workers):
            thread = threading.Thread(
                target=self._work, args=(index,), name=f"eas-worker-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    async def infer(
        self,
        inputs: Mapping[str, np.ndarray],
        *,
        priority: int = 0,
        timeout_s: float | None = None,
        outputs: frozenset[str] | None = None,
    ) -> BatchResult:
        """Queue one request and wait for its outputs.

        Args:
            inputs: validated arrays; all share the batch dim when ``batchable``.
            priority: 1 (highest) .. ``priority_levels``; 0 means the default level.
            timeout_s: longest time in the queue.
            outputs: the outputs wanted (None: all); the result may hold more.

        Raises:
            QueueFull, QueueTimeout, ShuttingDown: 503 conditions.
            InvalidInput: bad priority; or the runtime rejected this request's values.
            ProcessorError: the runtime failed on this request.
        """
        if self._closing:
            raise ShuttingDown("the server is shutting down")
        self.start()
        if not 0 <= priority <= self.priority_levels:
            raise InvalidInput(f"priority {priority} is outside 0..{self.priority_levels}")
        if self._queued_requests >= self.max_queue_size:
            waiting = self._queued_requests
            raise QueueFull(f"queue full ({waiting} of {self.max_queue_size} requests queued)")
        level = (priority or self.default_priority) - 1
        now = time.monotonic()
        deadline = None if timeout_s is None else now + max(0.0, timeout_s)
        rows = rows_of(inputs) if self.batchable else 1
        parts = [inputs] if rows <= self.max_batch_size else split_rows(inputs, self.max_batch_size)
        assert self._loop is not None
        request = _Request(len(parts))
        self._queued_requests += 1
        entries = []
        for part in parts:
            part_rows = rows_of(part) if self.batchable else 1
            group = group_key(part, self._padding) if self.merge else object()
            future = self._loop.create_future()
            chunk = len(parts) > 1
            entry = _Entry(part, part_rows, group, future, now, deadline, level, request, chunk)
            entry.outputs = outputs
            entries.append(entry)
            self._enqueue(entry)
        self._pump()
        try:
            if len(entries) == 1:
                return await entries[0].future
            return self._reassemble(await asyncio.gather(*(e.future for e in entries)))
        finally:
            for entry in entries:
                if entry.queued:  # the caller went away (cancelled) or a sibling chunk failed
                    self._remove(entry)
                    entry.future.cancel()
                elif not entry.future.done():  # running: nobody will read its outcome
                    entry.future.add_done_callback(_consume)

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until nothing is queued or running; returns False on timeout."""
        if self._idle is None:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Refuse new requests, fail queued ones with ShuttingDown, let running batches finish,
        stop the workers."""
        self._closing = True
        for level in self._levels:
            while level:
                entry = level[0]
                self._remove(entry)
                if not entry.future.done():
                    entry.future.set_exception(ShuttingDown("the server is shutting down"))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self.drain()
        for _ in self._threads:
            self._jobs.put(None)

    # ---------------------------------------------------------------------------- queueing

    def _enqueue(self, entry: _Entry) -> None:
        self._levels[entry.level].append(entry)
        self._queued += 1
        self._queued_rows += entry.rows
        self._with_deadline += entry.deadline is not None
        assert self._idle is not None
        self._idle.clear()
        if self._observer is not None:
            self._observer.on_queue_depth(self._queued_requests)

    def _remove(self, entry: _Entry) -> None:
        self._levels[entry.level].remove(entry)
        entry.queued = False
        self._queued -= 1
        self._queued_rows -= entry.rows
        self._with_deadline -= entry.deadline is not None
        entry.request.queued_parts -= 1
        if entry.request.queued_parts == 0:
            self._queued_requests -= 1
        if self._observer is not None:
            self._observer.on_queue_depth(self._queued_requests)
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        if self._idle is not None and self._queued == 0 and self._free == self.workers:
            self._idle.set()

    def _expire(self, now: float) -> float | None:
        """Fail timed-out entries; return the nearest remaining deadline."""
        if not self._with_deadline:
            return None
        nearest: float | None = None
        for level in self._levels:
            for entry in list(level):
                if entry.deadline is None:
                    continue
                if entry.deadline <= now:
                    self._remove(entry)
                    if not entry.future.done():
                        waited = (now - entry.enqueued) * 1000
                        entry.future.set_exception(
                            QueueTimeout(f"request timeout expired after {waited:.1f} ms in queue")
                        )
                elif nearest is None or entry.deadline < nearest:
                    nearest = entry.deadline
        return nearest

    def _candidate(self) -> tuple[list[_Entry], int, float, bool]:
        """The batch that would fire now: the oldest entry of the highest level, then entries of
        the same group in priority then arrival order, while they fit."""
        first = next(level[0] for level in self._levels if level)
        batch, rows, chunk = [first], first.rows, first.chunk
        if self.merge and not first.chunk:
            for level in self._levels:
                for entry in level:
                    if entry is first or entry.group != first.group or entry.chunk:
                        continue
                    if rows + entry.rows > self.max_batch_size:
                        break
                    batch.append(entry)
                    rows += entry.rows
                if rows >= self.max_batch_size:
                    break
        oldest = min(e.enqueued for e in batch)
        return batch, rows, oldest, chunk

    # ----------------------------------------------------------------------------- dispatch

    def _pump(self) -> None:
        """Launch every batch that should fire now, then arm the timer for the next reason to
        look again. Event loop thread only."""
        if self._pumping or self._closing:
            return
        self._pumping = True
        try:
            while True:
                now = time.monotonic()
                nearest_deadline = self._expire(now)  # also while every worker is busy
                if self._free <= -self._ahead or self._queued == 0:
                    self._arm(nearest_deadline)
                    return
                batch, rows, oldest, chunk = self._candidate()
                if self._free <= 0 and rows < self.max_batch_size:
                    self._arm(nearest_deadline)  # only a full batch waits ahead of the workers
                    return
                trigger = self._trigger(rows, oldest, chunk, now)
                if trigger is None:
                    wake_at = oldest + self.max_delay_s
                    if nearest_deadline is not None:
                        wake_at = min(wake_at, nearest_deadline)
                    self._arm(wake_at)
                    return
                if self.inline:
                    self._fire_soon(trigger)
                    continue  # the worker is reserved now: arms the timer and returns
                self._demand = self._queued_rows + self._inflight_rows  # the load level now
                for entry in batch:
                    self._remove(entry)
                self._launch(batch, rows, trigger)
        finally:
            self._pumping = False

    def _arm(self, when: float | None) -> None:
        """Have ``_pump`` run at monotonic time ``when``; None: no timer is needed."""
        if self._timer is not None:
            if when is not None and self._timer_at == when:
                return
            self._timer.cancel()
            self._timer = None
        if when is not None:
            assert self._loop is not None
            self._timer_at = when
            self._timer = self._loop.call_later(max(0.0, when - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._pump()

    def _trigger(self, rows: int, oldest: float, chunk: bool, now: float) -> str | None:
        if chunk:
            return "split"
        if rows >= self.max_batch_size:
            return "full"
        if self._queued_rows + self._inflight_rows >= self._demand:
            # Every row seen at the last launch is back (queued or running): no more are
            # expected, so a free worker is not held back (one client alone never waits).
            return "idle"
        if now - oldest >= self.max_delay_s:
            return "delay"
        return None

    def _launch(self, batch: list[_Entry], rows: int, trigger: str) -> None:
        self._free -= 1
        self._inflight_rows += rows
        if self._idle is not None:
            self._idle.clear()
        job = _Job(batch, rows, trigger, time.monotonic())
        if self.inline:
            self._run_inline(job)
        else:
            self._jobs.put(job)

    def _fire_soon(self, trigger: str) -> None:
        """Inline: reserve the worker and take the batch in a callback after those already due.
        The requests read in this loop turn are then all queued (their handlers run first), so
        they share the batch instead of the first of them running alone; and the answers that
        are ready are written before the loop is held."""
        self._free -= 1
        if self._idle is not None:
            self._idle.clear()
        assert self._loop is not None
        self._loop.call_soon(self._fire_inline, trigger)

    def _fire_inline(self, trigger: str) -> None:
        self._free += 1
        if self._closing or self._queued == 0:  # closed, or cancelled meanwhile
            self._maybe_idle()
            return
        now = time.monotonic()
        self._expire(now)
        if self._queued == 0:
            self._maybe_idle()
            self._pump()
            return
        batch, rows, oldest, chunk = self._candidate()
        trigger = self._trigger(rows, oldest, chunk, now) or trigger
        self._demand = self._queued_rows + self._inflight_rows
        for entry in batch:
            self._remove(entry)
        self._launch(batch, rows, trigger)

    def _finish(self, job: _Job, elapsed: float, results: list[_Outcome]) -> None:
        """Event loop thread: a worker is done with a batch."""
        self._free += 1
        self._inflight_rows -= job.rows
        if self._observer is not None:
            ok = not any(isinstance(r, Exception) for r in results)
            self._observer.on_batch(job.rows, job.trigger, elapsed, ok)
        for entry, result in zip(job.batch, results, strict=True):
            if entry.future.done():
                continue
            if isinstance(result, Exception):
                entry.future.set_exception(result)
            else:
                queued = job.started - entry.enqueued
                entry.future.set_result(BatchResult(result, queued, elapsed, job.rows))
        self._maybe_idle()
        self._pump()

    # ----------------------------------------------------------------------- worker thread

    def _run_job(self, job: _Job, worker: int) -> tuple[float, list[_Outcome]]:
        job.started = time.monotonic()  # a batch that waited ahead was queued until now
        wanted: frozenset[str] | None = frozenset()
        for e in job.batch:
            wanted = None if wanted is None or e.outputs is None else wanted | e.outputs
        results = self._execute([e.inputs for e in job.batch], worker, wanted)
        return time.monotonic() - job.started, results

    def _run_inline(self, job: _Job) -> None:
        """Event loop thread (``inline``): run the batch here and finish it at once."""
        elapsed, results = self._run_job(job, 0)
        self._finish(job, elapsed, results)

    def _work(self, index: int) -> None:
        """Worker thread: run batches and hand each result back to the event loop."""
        loop = self._loop
        assert loop is not None
        while True:
            job = self._jobs.get()
            if job is None:
                return
            elapsed, results = self._run_job(job, index)
            try:
                loop.call_soon_threadsafe(self._finish, job, elapsed, results)
            except RuntimeError:  # the loop is closed: the server is gone
                return

    def _execute(
        self,
        items: list[Mapping[str, np.ndarray]],
        worker: int,
        wanted: frozenset[str] | None = None,
    ) -> list[_Outcome]:
        """Run one batch. On failure run halves, so that a bad request fails alone instead of
        poisoning the requests it was batched with."""
        rows = [rows_of(it) for it in items] if self.batchable else [1] * len(items)
        try:
            merged, lengths = merge(items, self._padding)
            outputs = self._run(merged, worker, wanted)
            if self.batchable:
                total = sum(rows)
                for name, arr in outputs.items():
                    if arr.ndim == 0 or arr.shape[0] != total:
                        shape = list(arr.shape)
                        raise ProcessorError(
                            f"output {name!r} has shape {shape}; expected {total} rows"
                        )
            return list(split_outputs(outputs, rows, lengths, self._padding))
        except Exception as exc:
            if len(items) > 1:
                mid = len(items) // 2
                first, second = items[:mid], items[mid:]
                return self._execute(first, worker, wanted) + self._execute(second, worker, wanted)
            if isinstance(exc, EasServerError):
                return [exc]
            log.warning("runtime failed: %s", exc)
            return [ProcessorError(f"{type(exc).__name__}: {exc}")]

    @staticmethod
    def _reassemble(parts: list[BatchResult]) -> BatchResult:
        outputs = {
            name: np.concatenate([p.outputs[name] for p in parts]) for name in parts[0].outputs
        }
        return BatchResult(
            outputs,
            queue_s=max(p.queue_s for p in parts),
            compute_s=sum(p.compute_s for p in parts),
            batch_rows=max(p.batch_rows for p in parts),
        )


def _consume(future: asyncio.Future[BatchResult]) -> None:
    if not future.cancelled():
        future.exception()
