"""Iteration-level batching: the decoder runs one step for every running sequence at once, and
sequences join and leave the running batch between steps (as vLLM and TensorRT-LLM's in-flight
batching do). Synchronous and single-threaded: the engine (``_engine``) calls ``admit`` and
``decode`` from its one thread; tests call them directly.

Rows and caches. A request takes one decoder row (greedy) or ``num_beams`` rows; the running
rows are ``[0, n)``: when a request leaves, the last running rows move into its place. The rows'
keys/values live in the runtime's ``Cache`` (``_cache``: numpy on the CPU, device memory for
blade's CUDA runtime), which also runs the decoder over them.

A step: ``admit`` drops cancelled and expired requests, takes waiting ones while rows are free,
runs the front end and the encoder on them as one batch, writes their cross rows, runs the
prompt through the decoder (prefill) and picks each one's first token; ``decode`` feeds every
running row its last token at its position, writes the new keys/values and picks the next.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ._cache import Cache, buckets
from ._search import BeamSearch
from ._spec import GenerateParams, GenerationSpec

__all__ = ["Event", "Request", "Runtime", "Scheduler", "buckets"]  # buckets: from _cache


class Runtime(Protocol):
    """The model: its encoder, and a cache of decoder rows that runs the decoder step."""

    def encode(self, features: np.ndarray) -> Any:
        """``[B, n_mels, n_frames]`` -> the encoder's output for ``Cache.put_cross``."""
        ...

    def new_cache(self, capacity: int, sizes: tuple[int, ...]) -> Cache:
        """Caches for ``capacity`` rows whose self-attention length is one of ``sizes``."""
        ...


FrontEnd = Callable[[Sequence[np.ndarray]], np.ndarray]
"""Audio clips -> features ``[B, n_mels, n_frames]`` (``LogMel.batch``)."""


@dataclass(eq=False)
class Request:
    """One generation request as the scheduler sees it. ``cancelled`` may be set from another
    thread (the client went away); the scheduler drops the request at its next step.

    Attributes:
        audio: checked samples (1-D float32).
        params: resolved (``GenerateParams.resolve``).
        arrived: ``time.monotonic()`` at arrival; the deadline counts from it.
    """

    audio: np.ndarray
    params: GenerateParams
    arrived: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    # set by the scheduler
    tokens: list[int] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    started: float | None = None
    first_token: float | None = None
    beams: BeamSearch | None = None

    @property
    def deadline(self) -> float:
        timeout = self.params.timeout_s
        return math.inf if timeout is None else self.arrived + timeout


@dataclass(frozen=True, slots=True)
class Event:
    """What a step produced for one request: ``tokens`` new output tokens starting at output
    index ``index``; the last event of a request has ``finish_reason`` (``eos``, ``length``,
    ``deadline``) or ``error`` (the request failed: ``timeout`` or the runtime's message)."""

    request: Request
    index: int
    tokens: tuple[int, ...] = ()
    finish_reason: str | None = None
    error: str | None = None
    error_kind: str | None = None  # "timeout" | "runtime"


class Scheduler:
    """Iteration-level batching over ``capacity`` decoder rows.

    Args:
        spec: the bundle's geometry and special tokens.
        runtime: the encoder and decoder step.
        front_end: audio -> features.
        capacity: decoder rows (the running batch's largest size); a request of ``num_beams``
            beams takes that many.
        max_admit: the most requests encoded in one batch.
        clock: ``time.monotonic`` (tests may pass their own).
    """

    def __init__(
        self,
        spec: GenerationSpec,
        runtime: Runtime,
        front_end: FrontEnd,
        *,
        capacity: int = 32,
        max_admit: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.spec = spec
        self.runtime = runtime
        self.front_end = front_end
        self.capacity = capacity
        self.max_admit = max_admit or capacity
        self.clock = clock
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self._owner: list[Request | None] = [None] * capacity
        self._n = 0
        self._positions = np.zeros(capacity, dtype=np.int64)
        self._last = np.zeros(capacity, dtype=np.int64)
        self.cache = runtime.new_cache(capacity, buckets(spec.max_target_positions))
        self._prompt = np.asarray(spec.decoder_start, dtype=np.int64)

    # ---------------------------------------------------------------------- bookkeeping

    @property
    def rows_in_use(self) -> int:
        return self._n

    def add(self, request: Request) -> None:
        """Queue a request (its params resolved: ``num_beams`` <= capacity)."""
        if request.params.num_beams > self.capacity:
            raise ValueError(f"{request.params.num_beams} beams exceed {self.capacity} rows")
        self.waiting.append(request)

    def idle(self) -> bool:
        return not self.waiting and not self.running

    def _alloc(self, request: Request, count: int) -> None:
        request.rows = list(range(self._n, self._n + count))
        for row in request.rows:
            self._owner[row] = request
        self._n += count

    def _release(self, request: Request) -> None:
        """Free a request's rows, moving the last running rows into the holes."""
        if request in self.running:
            self.running.remove(request)
        for row in sorted(request.rows, reverse=True):
            last = self._n - 1
            if row != last:
                moved = self._owner[last]
                assert moved is not None
                self.cache.move(last, row)
                self._positions[row] = self._positions[last]
                self._last[row] = self._last[last]
                moved.rows[moved.rows.index(last)] = row
                self._owner[row] = moved
            self._owner[last] = None
            self._n -= 1
        request.rows = []

    # ---------------------------------------------------------------------------- stages

    def expire(self) -> list[Event]:
        """Drop cancelled requests (no event: nobody listens) and end expired ones."""
        now = self.clock()
        events: list[Event] = []
        kept: deque[Request] = deque()
        for request in self.waiting:
            if request.cancelled:
                continue
            if now >= request.deadline:
                events.append(
                    Event(
                        request,
                        0,
                        error=f"the request waited {now - request.arrived:.3f} s, past its "
                        f"timeout of {request.params.timeout_s} s, before decoding started",
                        error_kind="timeout",
                    )
                )
                continue
            kept.append(request)
        self.waiting = kept
        for request in list(self.running):
            if request.cancelled:
                self._release(request)
            elif now >= request.deadline:
                events.extend(self._finish(request, "deadline"))
        return events

    def admit(self) -> list[Event]:
        """Encode and prefill the waiting requests that fit; their first tokens."""
        events = self.expire()
        batch: list[Request] = []
        free = self.capacity - self._n
        while self.waiting and len(batch) < self.max_admit:
            beams = self.waiting[0].params.num_beams
            if beams > free:
                break  # first come, first served: no overtaking by smaller requests
            batch.append(self.waiting.popleft())
            free -= beams
        if not batch:
            return events
        try:
            features = self.front_end([r.audio for r in batch])
            cross = self.runtime.encode(features)
        except Exception as exc:  # the runtime's failure ends these requests, not the server
            return events + [_failed(r, exc) for r in batch]
        start = self._n
        now = self.clock()
        for i, request in enumerate(batch):
            self._alloc(request, request.params.num_beams)
            for row in request.rows:
                self.cache.put_cross(row, cross, i)
            request.started = now
        count = self._n - start
        prompt = np.broadcast_to(self._prompt, (count, self._prompt.size))
        longest = int(self._positions[:start].max(initial=0))
        try:
            self.cache.fit(start, max(longest, self._prompt.size) + 1)
            last = self.cache.prefill(start, count, prompt)
        except Exception as exc:
            for request in batch:
                self._release(request)
            return events + [_failed(r, exc) for r in batch]
        self._positions[start : self._n] = self._prompt.size
        self.running.extend(batch)
        # logits by request before choosing: a request that ends frees rows and moves others
        chosen = [(r, last[[row - start for row in r.rows]]) for r in batch]
        for request, rows_logits in chosen:
            events.extend(self._choose(request, rows_logits, now))
        return events

    def decode(self) -> list[Event]:
        """One decoder step for every running request."""
        n = self._n
        if n == 0:
            return []
        positions = self._positions[:n].copy()
        try:
            self.cache.fit(n, int(positions.max()) + 1)
            step = self.cache.step(n, self._last[:n].copy(), positions)
        except Exception as exc:
            failed = [_failed(r, exc) for r in list(self.running)]
            for request in list(self.running):
                self._release(request)
            return failed
        self._positions[:n] += 1
        now = self.clock()
        events: list[Event] = []
        chosen = [(r, step[r.rows]) for r in self.running]  # before rows move (see admit)
        for request, rows_logits in chosen:
            events.extend(self._choose(request, rows_logits, now))
        return events

    # ------------------------------------------------------------------------- choosing

    def _choose(self, request: Request, logits: np.ndarray, now: float) -> list[Event]:
        """Pick a request's next token(s) from its rows' logits ``[rows, V]``."""
        params = request.params
        assert params.max_new_tokens is not None
        if params.num_beams == 1:
            token = int(np.argmax(logits[0]))
            if token == self.spec.eos_token_id:
                return self._finish(request, "eos")
            index = len(request.tokens)
            request.tokens.append(token)
            request.first_token = request.first_token or now
            self._last[request.rows[0]] = token
            event = Event(request, index, (token,))
            if len(request.tokens) >= params.max_new_tokens:
                return [event, *self._finish(request, "length")]
            return [event]
        search = request.beams
        if search is None:  # first step: the prompt's one beam (all rows hold the same)
            search = request.beams = BeamSearch(
                params.num_beams, self.spec.eos_token_id, params.max_new_tokens
            )
        request.first_token = request.first_token or now
        step = search.step(logits[: len(search.live)])
        if step is None:
            return self._finish(request, "")
        rows = np.asarray(request.rows)
        sources = rows[step.parents]
        if not np.array_equal(sources, rows):
            self.cache.reorder(rows, sources)
            self._positions[rows] = self._positions[sources]
        self._last[rows] = step.tokens
        return []

    def _finish(self, request: Request, reason: str) -> list[Event]:
        """End a running request: for beam search, its answer's tokens first."""
        events: list[Event] = []
        if request.beams is not None:
            best = request.beams.best()
            request.tokens = list(best.tokens)
            reason = reason or best.reason
            if request.tokens:
                events.append(Event(request, 0, tuple(request.tokens)))
        self._release(request)
        events.append(Event(request, len(request.tokens), finish_reason=reason))
        return events


def _failed(request: Request, exc: Exception) -> Event:
    return Event(request, 0, error=f"{type(exc).__name__}: {exc}", error_kind="runtime")
