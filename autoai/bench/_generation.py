"""The generate mode of ``autoai bench``: closed-loop streaming generate calls to a generative
(seq2seq) model, measured for QPS, RT, time to first token and tokens per second.

Per step, ``concurrency`` workers each keep one ``generate_stream`` call in flight: through the
SDK (``AsyncModelClient``, routed as published) or straight to one instance
(``AsyncEasClient``), with the same synthetic clip of ``audio_seconds`` every time. After
``warmup`` the window opens; after ``duration`` it closes, sending stops, the streams in flight
finish (or are cancelled after the call timeout), and ``_genstats`` reduces what the workers
recorded. Every call is a stream (a whole ``generate`` would hide the time to first token).

Unlike the predict mode, this one runs in one process, closed loop only, and does not scrape the
instances' ``/metrics``: the server-side generation figures are on their ``/metrics``
(``eas_generation_*``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from prometheus_client import CollectorRegistry

from autoai.sdk import AsyncModelClient, ModelClientError
from config_store import ConfigStoreError, open_store
from eas_client import (
    AsyncEasClient,
    EasClientError,
    GenerateChunk,
    InvalidRequest,
    ModelNotFound as NotServed,
    NoInstanceAvailable,
    ProtocolError,
    TransportError,
)

from ._direct import base_url
from ._errors import BadInput, BenchError, Unreachable
from ._generator import run_interruptible
from ._genstats import GenerateReport, GenerateSamples, GenerateStep, summarize_generate
from ._stats import error_kind

__all__ = ["GenerateConfig", "bench_generate", "run_generate", "synth_audio"]

SAMPLE_RATE = 16000
_TICK_S = 0.1
_ERROR_PAUSE_S = 0.001  # a worker whose call failed waits this long: no busy loop on refusals
Progress = Callable[[int, float], None]
"""Called about ten times a second with the step's index and the seconds since it started."""


@dataclass(frozen=True)
class GenerateConfig:
    """What to benchmark in the generate mode.

    Attributes:
        model: the model's name.
        concurrency: the steps: streams in flight at all times, one step per value.
        store: the config store URL (calls through the SDK); exclusive with ``url``.
        url: one instance's ``http://HOST:PORT`` (calls straight to it).
        version: pin this version.
        audio_seconds: the length of each request's clip (synthetic, 16 kHz).
        max_new_tokens: each request's most output tokens (``None``: the model's default).
        num_beams: 1 greedy; 2 to 4 beam search (one event at the end: TTFT = RT).
        warmup: seconds of load before each step's window.
        duration: seconds of each step's window.
        timeout: seconds per call (the generation's deadline).

    Raises:
        BadInput: both or neither of ``store`` and ``url``, no step, or a value out of range.
    """

    model: str
    concurrency: Sequence[int] = (1, 4, 16)
    store: str | None = None
    url: str | None = None
    version: str | None = None
    audio_seconds: float = 5.0
    max_new_tokens: int | None = 32
    num_beams: int = 1
    warmup: float = 5.0
    duration: float = 30.0
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if (self.store is None) == (self.url is None):
            raise BadInput("give either a store URL (through the SDK) or one instance's URL")
        if not self.concurrency or any(c < 1 for c in self.concurrency):
            raise BadInput(f"concurrency must be one or more values >= 1, got {self.concurrency}")
        if not (math.isfinite(self.audio_seconds) and 0 < self.audio_seconds <= 30):
            raise BadInput(f"audio_seconds must be in (0, 30], got {self.audio_seconds}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise BadInput(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.num_beams < 1:
            raise BadInput(f"num_beams must be >= 1, got {self.num_beams}")
        if self.warmup < 0 or not self.duration > 0 or not self.timeout > 0:
            raise BadInput("the warmup must be >= 0 s, the duration and the timeout > 0 s")


def synth_audio(seconds: float, *, rate: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """A speech-like clip: a gliding tone with harmonics under a syllable-rate envelope, plus a
    little noise; float32 in [-0.5, 0.5]. The same ``seed`` gives the same clip."""
    n = max(1, round(seconds * rate))
    t = np.arange(n, dtype=np.float64) / rate
    rng = np.random.default_rng(seed)
    pitch = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(k * phase) / k for k in (1, 2, 3, 4))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    clip = voice * envelope + 0.02 * rng.standard_normal(n)
    return (0.5 * clip / max(float(np.abs(clip).max()), 1e-9)).astype(np.float32)


class _Target:
    """Streams of the model, through the SDK or one instance's client."""

    def __init__(
        self,
        kind: Literal["sdk", "url"],
        address: str,
        stream: Callable[[], AsyncGenerator[GenerateChunk, None]],
        aclose: Callable[[], Any],
    ):
        self.kind = kind
        self.address = address
        self.stream = stream
        self._aclose = aclose

    async def aclose(self) -> None:
        await self._aclose()


async def _target(config: GenerateConfig, audio: np.ndarray) -> _Target:
    """The calls of ``config``, with their client open.

    Raises:
        BadInput: a bad URL, or the model is not published (or has no such version).
        Unreachable: the store cannot be opened.
    """
    params: dict[str, Any] = {
        "max_new_tokens": config.max_new_tokens,
        "num_beams": config.num_beams,
        "timeout_s": config.timeout,
    }
    in_flight = max(64, *config.concurrency)
    if config.url is not None:
        origin, _, _ = base_url(config.url)
        client = AsyncEasClient(
            urls=[origin],
            model=config.model,
            version=config.version,
            timeout=config.timeout,
            max_connections_per_instance=in_flight,
        )
        return _Target(
            "url", origin, lambda: client.generate_stream(audio, **params), client.aclose
        )
    assert config.store is not None
    store_url = config.store
    try:
        store = await asyncio.to_thread(open_store, store_url)
    except ConfigStoreError as exc:
        raise Unreachable(f"cannot open the config store {store_url}: {exc}", store_url) from exc
    sdk = AsyncModelClient(
        store,
        registry=CollectorRegistry(),
        timeout=config.timeout,
        max_connections_per_instance=in_flight,
    )

    async def aclose() -> None:
        await sdk.aclose()
        await asyncio.to_thread(store.close)

    try:
        table = await asyncio.to_thread(sdk.routes, config.model)
        if config.version is not None:
            table.route(config.version)
    except (ModelClientError, ConfigStoreError) as exc:
        await aclose()
        raise BadInput(str(exc)) from exc
    model, version = config.model, config.version
    return _Target(
        "sdk",
        store_url,
        lambda: sdk.generate_stream(model, audio, version=version, **params),
        aclose,
    )


async def _probe(target: _Target, model: str) -> None:
    """One stream to its end, so that a model that cannot answer is found before the run.

    Raises:
        BadInput: the SDK or the instance refuses the request (not generative, bad audio).
        Unreachable: no live instance answers.
        BenchError: another failure of the first call.
    """
    try:
        async with contextlib.aclosing(target.stream()) as stream:
            async for _ in stream:
                pass
    except (ModelClientError, InvalidRequest, NotServed, ProtocolError) as exc:
        raise BadInput(f"model {model!r} refuses the generate request: {exc}") from exc
    except (NoInstanceAvailable, TransportError) as exc:
        raise Unreachable(f"model {model!r}: {exc}", target.address) from exc
    except EasClientError as exc:
        raise BenchError(f"model {model!r}: the first generate call failed: {exc}") from exc


async def _until(deadline: float, stop: asyncio.Event, tick: Callable[[], None]) -> bool:
    """Wait until ``deadline`` (``perf_counter``); False if ``stop`` was set first."""
    while True:
        tick()
        left = deadline - time.perf_counter()
        if left <= 0:
            return True
        if stop.is_set():
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), min(_TICK_S, left))


async def _step(
    target: _Target,
    concurrency: int,
    index: int,
    config: GenerateConfig,
    stop: asyncio.Event,
    progress: Progress,
) -> GenerateStep | None:
    clock = time.perf_counter
    samples = GenerateSamples()
    sending = True

    async def worker() -> None:
        while sending:
            sent = clock()
            first: float | None = None
            tokens = 0
            try:
                async with contextlib.aclosing(target.stream()) as stream:
                    async for chunk in stream:
                        if chunk.tokens:
                            if first is None:
                                first = clock()
                            tokens += len(chunk.tokens)
            except Exception as exc:  # counted by kind, never raised: the run goes on
                samples.error(clock(), error_kind(exc))
                await asyncio.sleep(_ERROR_PAUSE_S)
            else:
                samples.ok(sent, first, clock(), tokens)

    loop = asyncio.get_running_loop()
    workers = [loop.create_task(worker()) for _ in range(concurrency)]
    began = clock()

    def tick() -> None:
        progress(index, clock() - began)

    try:
        if not await _until(began + config.warmup, stop, tick):
            return None  # stopped during the warmup: nothing measured
        start = clock()
        interrupted = not await _until(start + config.duration, stop, tick)
        end = clock()
    finally:
        sending = False
        _, late = await asyncio.wait(workers, timeout=config.timeout + 1)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)
    return GenerateStep(
        concurrency, end - start, interrupted, summarize_generate(samples, start, end)
    )


async def bench_generate(
    config: GenerateConfig,
    *,
    stop: asyncio.Event | None = None,
    progress: Progress | None = None,
    report: list[GenerateReport] | None = None,
) -> GenerateReport:
    """Run the generate benchmark described by ``config``.

    Args:
        config: what to run.
        stop: set it to end the current step's window now and skip the rest.
        progress: called with (step index, seconds since the step began) while it runs.
        report: the report is also appended to this list as soon as it exists (after the
            probing call), so that a caller interrupted hard still has the finished steps.

    Raises:
        BadInput: unknown model or version, a model that refuses generate requests, a bad URL.
        Unreachable: nothing answers, or the store cannot be opened.
        BenchError: the first call failed otherwise.
    """
    stop = stop or asyncio.Event()
    audio = synth_audio(config.audio_seconds)
    target = await _target(config, audio)
    try:
        await _probe(target, config.model)
        result = GenerateReport(
            model=config.model,
            version=config.version,
            target=target.kind,
            address=target.address,
            audio_seconds=config.audio_seconds,
            max_new_tokens=config.max_new_tokens,
            num_beams=config.num_beams,
            warmup_s=config.warmup,
            duration_s=config.duration,
        )
        if report is not None:
            report.append(result)
        for index, concurrency in enumerate(config.concurrency):
            if stop.is_set():
                result.interrupted = True
                break
            step = await _step(
                target, concurrency, index, config, stop, progress or (lambda _i, _s: None)
            )
            if step is not None:
                result.steps.append(step)
            if step is None or step.interrupted:
                result.interrupted = True
                break
        return result
    finally:
        await target.aclose()


def run_generate(
    config: GenerateConfig,
    *,
    progress: Progress | None = None,
    on_interrupt: Callable[[], None] | None = None,
) -> GenerateReport:
    """``bench_generate`` on a new event loop (uvloop when installed), with Ctrl-C handled as
    ``autoai.bench.run`` does: the first SIGINT ends the current window and skips the rest, a
    second one cancels the calls in flight; the report of what was measured is returned.

    Raises:
        BadInput, Unreachable, BenchError: see ``bench_generate`` (nothing was measured).
        KeyboardInterrupt: interrupted before the first call answered.
    """
    return run_interruptible(
        lambda stop, holder: bench_generate(config, stop=stop, progress=progress, report=holder),
        on_interrupt,
    )
