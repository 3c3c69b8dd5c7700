"""The generation engine: one thread that owns the scheduler (and so the model and its caches)
and runs step after step while there is work; the event loop hands requests in and gets token
events back. The adapter between the asyncio world of the HTTP and gRPC front ends and the
synchronous scheduler.

Threads. ``submit`` runs on the event loop: it checks the audio and parameters (a 400 before any
work), appends the request under a lock and wakes the engine thread. The engine thread takes
the new requests, runs ``admit`` then ``decode`` and posts each step's events to the loop in one
``call_soon_threadsafe``; each ``GenerationStream`` reads its own events from an asyncio queue.
A stream that is closed before its end (the client went away) marks its request cancelled: the
scheduler frees its rows at the next step, so a dead request costs at most one more step.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .._errors import InvalidInput, ProcessorError, QueueFull, QueueTimeout, ShuttingDown
from ._mel import InvalidAudio, check_audio
from ._scheduler import Event, Request, Scheduler
from ._spec import GenerateParams, GenerationError

__all__ = [
    "GenerateResult",
    "GenerationEngine",
    "GenerationEvent",
    "GenerationObserver",
    "GenerationStream",
]

log = logging.getLogger("eas_server.generation")

Detokenize = Callable[[list[int]], str]


class GenerationObserver(Protocol):
    """Where the engine reports what generation metrics need (``ServerMetrics`` implements it)."""

    def on_first_token(self, seconds: float) -> None:
        """Time from arrival to the first output token of a request."""

    def on_finished(self, tokens: int, per_token_s: float | None) -> None:
        """A request ended with ``tokens`` output tokens; the mean time between them."""

    def on_sequences(self, running: int, waiting: int) -> None:
        """The running and waiting request counts after a step."""


@dataclass(frozen=True, slots=True)
class GenerationEvent:
    """What a stream yields: ``tokens`` (new output tokens from output index ``index``) and,
    with a tokenizer, ``text`` (the new text they add); the last event has ``finish_reason``
    (``eos``, ``length`` or ``deadline``) and ``output_tokens`` (the answer's length)."""

    index: int
    tokens: tuple[int, ...]
    text: str | None = None
    finish_reason: str | None = None
    output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class GenerateResult:
    """A whole answer."""

    tokens: tuple[int, ...]
    text: str | None
    finish_reason: str
    queue_s: float
    time_to_first_token_s: float | None
    total_s: float


class GenerationStream:
    """One request's events, in order; ``async for event in stream``. Closing it early (or
    ``cancel()``) cancels the request."""

    def __init__(self, engine: GenerationEngine, request: Request, detokenize: Detokenize | None):
        self._engine = engine
        self.request = request
        self._detokenize = detokenize
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._tokens: list[int] = []
        self._text = ""
        self._pieces = detokenize is not None
        """Whether events carry the text their tokens add (not while ``collect`` reads the
        stream: it decodes the whole answer once at the end)."""
        self.finished_at: float | None = None
        self.finish_reason: str | None = None

    def _put(self, event: Event) -> None:
        self._queue.put_nowait(event)

    def __aiter__(self) -> AsyncIterator[GenerationEvent]:
        return self

    async def __anext__(self) -> GenerationEvent:
        if self.finish_reason is not None:
            raise StopAsyncIteration
        event = await self._queue.get()
        if event.error is not None:
            self.finish_reason = "error"
            self.finished_at = time.monotonic()
            if event.error_kind == "timeout":
                raise QueueTimeout(event.error)
            if event.error_kind == "shutdown":
                raise ShuttingDown(event.error)
            raise ProcessorError(f"generation failed: {event.error}")
        if event.finish_reason is not None:
            self.finish_reason = event.finish_reason
            self.finished_at = time.monotonic()
            return GenerationEvent(
                len(self._tokens), (), "" if self._detokenize else None, event.finish_reason,
                len(self._tokens),
            )  # fmt: skip
        self._tokens.extend(event.tokens)
        return GenerationEvent(event.index, event.tokens, self._new_text())

    def _new_text(self) -> str | None:
        """The text the new tokens add (the whole output decoded again, less what was sent:
        a token may complete a character that the previous one started)."""
        if self._detokenize is None or not self._pieces:
            return None
        text = self._detokenize(self._tokens)
        if text.endswith("\ufffd"):
            return ""  # an incomplete character: wait for the next token
        piece = text[len(self._text) :] if text.startswith(self._text) else text
        self._text = text
        return piece

    def cancel(self) -> None:
        """The client went away: stop working on this request (no more events)."""
        if self.finish_reason is None:
            self.finish_reason = "cancelled"
            self.request.cancelled = True
            self._engine.wake()

    async def aclose(self) -> None:
        self.cancel()

    async def collect(self) -> GenerateResult:
        """Read the stream to its end: the whole answer."""
        reason = ""
        self._pieces = False  # the text is decoded once, below
        try:
            async for event in self:
                if event.finish_reason is not None:
                    reason = event.finish_reason
        except asyncio.CancelledError:
            self.cancel()
            raise
        request = self.request
        ended = self.finished_at or time.monotonic()
        started = request.started or ended
        first = request.first_token
        text = self._detokenize(self._tokens) if self._detokenize is not None else None
        return GenerateResult(
            tuple(self._tokens),
            text,
            reason,
            started - request.arrived,
            None if first is None else first - request.arrived,
            ended - request.arrived,
        )


class GenerationEngine:
    """Runs a ``Scheduler`` on its own thread.

    Args:
        scheduler: the model, its caches and the running batch.
        max_queue: the most requests waiting to start (QueueFull beyond).
        detokenize: token ids -> text (a bundled tokenizer), or None.
        observer: metrics sink.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        max_queue: int = 256,
        detokenize: Detokenize | None = None,
        observer: GenerationObserver | None = None,
    ):
        self.scheduler = scheduler
        self.spec = scheduler.spec
        self.max_queue = max_queue
        self.detokenize = detokenize
        self.observer = observer
        self._cond = threading.Condition()
        self._incoming: list[Request] = []
        self._streams: dict[int, GenerationStream] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.steps = 0
        """Decoder steps run (with and without admissions), for tests and /stats."""

    # ------------------------------------------------------------------- event loop side

    def submit(self, audio: object, params: GenerateParams) -> GenerationStream:
        """Queue one request; call on the event loop that will read the stream.

        Raises:
            InvalidInput: bad audio (dtype, shape, empty, too long, NaN) or parameters.
            QueueFull: ``max_queue`` requests are waiting.
            ShuttingDown: the engine is stopping.
        """
        spec = self.spec
        try:
            samples = check_audio(audio, spec.n_samples)
            resolved = params.resolve(spec)
        except (InvalidAudio, GenerationError) as exc:
            raise InvalidInput(str(exc)) from None
        if resolved.num_beams > self.scheduler.capacity:
            raise InvalidInput(
                f"num_beams {resolved.num_beams} exceeds this server's {self.scheduler.capacity} "
                "decoder rows"
            )
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError("GenerationEngine.submit from a second event loop")
        request = Request(samples, resolved)
        stream = GenerationStream(self, request, self.detokenize)
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the server is shutting down")
            waiting = len(self._incoming) + len(self.scheduler.waiting)
            if waiting >= self.max_queue:
                raise QueueFull(f"{waiting} generation requests are waiting (the limit)")
            self._streams[id(request)] = stream
            self._incoming.append(request)
            self._cond.notify()
        self._ensure_thread()
        return stream

    async def generate(self, audio: object, params: GenerateParams) -> GenerateResult:
        """The whole answer of one request (``submit`` + ``collect``)."""
        return await self.submit(audio, params).collect()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def _dispatch(self, events: list[Event]) -> None:
        for event in events:
            key = id(event.request)
            stream = self._streams.get(key)
            if stream is None:
                continue
            if event.finish_reason is not None or event.error is not None:
                del self._streams[key]
            stream._put(event)

    # ---------------------------------------------------------------------- engine side

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="generation", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        scheduler = self.scheduler
        while True:
            with self._cond:
                while not self._stopping and not self._incoming and scheduler.idle():
                    self._cond.wait()
                if self._stopping:
                    break
                incoming, self._incoming = self._incoming, []
            for request in incoming:
                scheduler.add(request)
            try:
                self._post(scheduler.admit())
                if scheduler.running:
                    self._post(scheduler.decode())
                    self.steps += 1
            except Exception:  # a bug, not a model error (those end requests): keep serving
                log.exception("generation step failed")
                for request in [*scheduler.running, *scheduler.waiting]:
                    scheduler._release(request)
                    self._post([Event(request, 0, error="internal error", error_kind="runtime")])
                scheduler.running.clear()
                scheduler.waiting.clear()
            if self.observer is not None:
                self.observer.on_sequences(len(scheduler.running), len(scheduler.waiting))
        self._fail_all("the server is shutting down")

    def _post(self, events: list[Event]) -> None:
        if not events:
            return
        observer = self.observer
        if observer is not None:
            for event in events:
                request = event.request
                if event.tokens and event.index == 0 and request.first_token is not None:
                    observer.on_first_token(request.first_token - request.arrived)
                if event.finish_reason is not None:
                    count = len(request.tokens)
                    per_token = None
                    if count > 1 and request.first_token is not None:
                        per_token = (time.monotonic() - request.first_token) / (count - 1)
                    observer.on_finished(count, per_token)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._dispatch, events)

    def _fail_all(self, message: str) -> None:
        with self._cond:
            pending = [*self._incoming, *self.scheduler.waiting, *self.scheduler.running]
            self._incoming = []
        self._post([Event(r, 0, error=message, error_kind="shutdown") for r in pending])

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread; requests still queued or running fail with ShuttingDown."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def warmup(self, seconds: float = 1.0) -> None:
        """Run the encoder and a few decoder steps on silence, off the event loop (first-run
        costs out of the first request)."""
        scheduler = self.scheduler
        request = Request(
            np.zeros(int(seconds * self.spec.sample_rate), np.float32),
            GenerateParams(max_new_tokens=2).resolve(self.spec),
        )
        scheduler.add(request)
        events = scheduler.admit()
        while scheduler.running:
            events += scheduler.decode()
        failed = [e.error for e in events if e.error]
        if failed:
            raise ProcessorError(f"warm-up failed: {failed[0]}")
