"""Iteration-level batching: the decoder runs one step for every running sequence at once, and
sequences join and leave the running batch between steps (as vLLM and TensorRT-LLM's in-flight
batching do). Synchronous and single-threaded: the engine (``_engine``) calls ``admit`` and
``decode`` from its one thread; tests call them directly.

Rows and caches. The scheduler owns two buffers of ``capacity`` rows, batch first so that the
running rows ``[0, n)`` are one contiguous slice handed to the runtime without a copy:

- ``cross``: ``[capacity, L, 2, H, F, D]``, each row's cross-attention keys/values, written once
  when its request is admitted (the encoder's output);
- ``self``: ``[capacity, L, 2, H, S, D]``, the decoder's own keys/values, ``S`` a bucket (16, 32,
  ... up to the positional table) that grows when the longest row needs it and shrinks when it
  leaves: attention runs over the bucket, entries past a row's position masked by the graph.

A request takes one row (greedy) or ``num_beams`` rows. When one leaves, the last running row
moves into its place, so the running rows stay ``[0, n)``.

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
from typing import Protocol

import numpy as np

from ._search import BeamSearch
from ._spec import GenerateParams, GenerationSpec

__all__ = ["Event", "Request", "Runtime", "Scheduler", "buckets"]


class Runtime(Protocol):
    """The model's two graphs (``decoder.onnx`` contract in ``_spec``/docs/generation.md)."""

    def encode(self, features: np.ndarray) -> np.ndarray:
        """``[B, n_mels, n_frames]`` -> cross keys/values ``[B, L, 2, H, F, D]``."""
        ...

    def decode(
        self,
        tokens: np.ndarray,
        positions: np.ndarray,
        self_cache: np.ndarray,
        cross_cache: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One decoder step: logits ``[B, T, V]`` and the new keys/values ``[B, L, 2, H, T, D]``."""
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


def buckets(limit: int, smallest: int = 16) -> tuple[int, ...]:
    """Cache lengths: powers of two from ``smallest``, the last one ``limit``."""
    sizes: list[int] = []
    size = smallest
    while size < limit:
        sizes.append(size)
        size *= 2
    return (*sizes, limit)


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
        self._buckets = buckets(spec.max_target_positions)
        self._cross: np.ndarray | None = None
        self._self: np.ndarray | None = None
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
                assert moved is not None and self._cross is not None and self._self is not None
                self._cross[row] = self._cross[last]
                self._self[row] = self._self[last]
                self._positions[row] = self._positions[last]
                self._last[row] = self._last[last]
                moved.rows[moved.rows.index(last)] = row
                self._owner[row] = moved
            self._owner[last] = None
            self._n -= 1
        request.rows = []

    def _ensure_buffers(self, cross: np.ndarray) -> None:
        if self._cross is None:
            self._cross = np.zeros((self.capacity, *cross.shape[1:]), dtype=cross.dtype)
            layers, two, heads, _, dim = cross.shape[1:]
            shape = (self.capacity, layers, two, heads, self._buckets[0], dim)
            self._self = np.zeros(shape, dtype=cross.dtype)

    def _fit_bucket(self, need: int) -> None:
        """Grow the self cache to the smallest bucket holding ``need`` entries, or shrink it
        when the longest row no longer needs the current one."""
        assert self._self is not None
        size = next(b for b in self._buckets if b >= need)
        current = self._self.shape[4]
        if size == current:
            return
        if size < current and need > size // 2 + 1:
            return  # hysteresis: shrink only when well inside the smaller bucket
        resized = np.zeros((*self._self.shape[:4], size, self._self.shape[5]), self._self.dtype)
        keep = min(size, current)
        resized[: self._n, ..., :keep, :] = self._self[: self._n, ..., :keep, :]
        self._self = resized

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
        self._ensure_buffers(cross)
        assert self._cross is not None and self._self is not None
        start = self._n
        now = self.clock()
        for i, request in enumerate(batch):
            self._alloc(request, request.params.num_beams)
            self._cross[request.rows] = cross[i]
            request.started = now
        rows = slice(start, self._n)
        count = self._n - start
        prompt = np.broadcast_to(self._prompt, (count, self._prompt.size))
        layers, two, heads, _, dim = self._self.shape[1:]
        empty = np.zeros((count, layers, two, heads, 0, dim), dtype=self._self.dtype)
        try:
            logits, new_kv = self.runtime.decode(
                np.ascontiguousarray(prompt),
                np.zeros(count, dtype=np.int64),
                empty,
                self._cross[rows],
            )
        except Exception as exc:
            for request in batch:
                self._release(request)
            return events + [_failed(r, exc) for r in batch]
        longest = int(self._positions[:start].max(initial=0))
        self._fit_bucket(max(longest, self._prompt.size) + 1)
        self._self[rows, ..., : self._prompt.size, :] = new_kv
        self._positions[rows] = self._prompt.size
        self.running.extend(batch)
        last = logits[:, -1, :]
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
        assert self._cross is not None and self._self is not None
        self._fit_bucket(int(self._positions[:n].max()) + 1)
        positions = self._positions[:n].copy()
        try:
            logits, new_kv = self.runtime.decode(
                self._last[:n, None].copy(), positions, self._self[:n], self._cross[:n]
            )
        except Exception as exc:
            failed = [_failed(r, exc) for r in list(self.running)]
            for request in list(self.running):
                self._release(request)
            return failed
        rows = np.arange(n)
        self._self[rows, :, :, :, positions, :] = new_kv[:, :, :, :, 0, :]
        self._positions[:n] += 1
        now = self.clock()
        step = logits[:, 0, :]
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
        assert self._self is not None
        rows = np.asarray(request.rows)
        sources = rows[step.parents]
        if not np.array_equal(sources, rows):
            self._self[rows] = self._self[sources]
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
