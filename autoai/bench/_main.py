"""The benchmark as one call: build the target, draw or check the inputs, probe, run the steps.

With ``processes`` > 1 this process probes, starts the generator processes (``ProcessPool``),
scrapes and merges; the children make the calls. ``run`` is the blocking entry point of the
CLI: it runs on uvloop when installed (the generator's own CPU per call is what limits how far
it can push a server), and turns the first Ctrl-C into "stop after this window" and a second
one into "stop now", returning what was measured either way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoai.sdk import Signature

from ._direct import DirectTarget, base_url, fetch_metadata
from ._errors import BadInput
from ._generator import run_interruptible
from ._inputs import check, describe, draw_inputs, given_inputs, signature_from_metadata
from ._pool import ProcessPool
from ._protocol import ChildSpec
from ._report import BenchReport, Step
from ._runner import Progress, run_steps
from ._sdk import SdkTarget
from ._split import split_step

__all__ = ["BenchConfig", "bench", "run"]


@dataclass(frozen=True)
class BenchConfig:
    """What to benchmark, and how.

    Attributes:
        model: the model's name.
        store: the config store URL (calls through the SDK); exclusive with ``url``.
        url: one instance's ``http://HOST:PORT`` (calls straight to it).
        version: pin this version (default: routed as published / the instance's).
        steps: the load levels, run in order.
        warmup: seconds of load before each step's window (not measured).
        duration: seconds of each step's window.
        inputs: the request's tensors (arrays, or nested lists converted to the signature's
            datatypes); ``None``: drawn from the signature with ``batch`` rows.
        batch: rows per request when inputs are drawn.
        binary: binary tensors (else JSON).
        timeout: seconds per call.
        processes: generator processes sharing every step's load (``split_step``): the
            concurrency (or in-flight limit) must be at least this. Drawn inputs differ per
            process (seeded by its number).

    Raises:
        BadInput: no step, both or neither of ``store`` and ``url``, a duration out of range,
            or a load that the processes cannot share.
    """

    model: str
    steps: Sequence[Step]
    store: str | None = None
    url: str | None = None
    version: str | None = None
    warmup: float = 5.0
    duration: float = 30.0
    inputs: Mapping[str, Any] | None = None
    batch: int = 1
    binary: bool = True
    timeout: float = 5.0
    processes: int = 1

    def __post_init__(self) -> None:
        if (self.store is None) == (self.url is None):
            raise BadInput("give either a store URL (through the SDK) or one instance's URL")
        if not self.steps:
            raise BadInput("no step to run")
        if self.warmup < 0 or not self.duration > 0:
            raise BadInput("the warmup must be >= 0 s and the duration > 0 s")
        if self.processes < 1:
            raise BadInput(f"processes must be >= 1, got {self.processes}")
        for step in self.steps:
            try:
                split_step(step, self.processes)
            except ValueError as exc:
                raise BadInput(str(exc)) from None


Started = Callable[[BenchReport], None]


Arrays = dict[str, np.ndarray[Any, Any]]


def _inputs(signature: Signature, config: BenchConfig) -> Arrays:
    """The request's tensors: given (converted, checked) or drawn from the signature."""
    if config.inputs is None:
        return draw_inputs(signature, config.batch)
    inputs = given_inputs(signature, config.inputs)
    check(signature, inputs, config.model)
    return inputs


def _rows(inputs: Mapping[str, np.ndarray[Any, Any]]) -> int:
    """The rows of given inputs: their first dim (1 for scalars)."""
    first = next(iter(inputs.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim > 0 else 1


def _pool(config: BenchConfig, signature: Signature, inputs: Arrays, address: str) -> ProcessPool:
    """The generator processes of ``config``: process 0 sends ``inputs``, the others theirs
    (the same given inputs, or drawn with their own seed, so that the bodies vary)."""
    n = config.processes
    drawn = config.inputs is None
    per_process = [
        draw_inputs(signature, config.batch, seed=i) if drawn and i > 0 else inputs
        for i in range(n)
    ]
    shares = [split_step(s, n)[0] for s in config.steps]  # the first share is the largest
    in_flight = max(s.concurrency or s.max_in_flight for s in shares)
    specs = [
        ChildSpec(
            index=i,
            model=config.model,
            version=config.version,
            url=address if config.url is not None else None,
            store=config.store,
            inputs=per_process[i],
            binary=config.binary,
            timeout=config.timeout,
            max_in_flight=in_flight,
        )
        for i in range(n)
    ]
    return ProcessPool(specs, drain_timeout=config.timeout + 1)


async def _target(config: BenchConfig) -> tuple[DirectTarget | SdkTarget, str, Signature, Arrays]:
    """The target, probed once with the inputs: it, its address, the signature, the inputs."""
    if config.url is not None:
        origin, _, _ = base_url(config.url)
        metadata = await fetch_metadata(origin, config.model, config.version)
        signature = signature_from_metadata(metadata, config.model)
        inputs = _inputs(signature, config)
        direct = DirectTarget(
            origin,
            config.model,
            config.version,
            inputs,
            binary=config.binary,
            timeout=config.timeout,
        )
        await direct.probe()
        return direct, origin, signature, inputs
    assert config.store is not None
    in_flight = max(
        s.max_in_flight if s.rate is not None else s.concurrency or 1 for s in config.steps
    )
    sdk = await SdkTarget.open(
        config.store,
        config.model,
        config.version,
        binary=config.binary,
        timeout=config.timeout,
        max_in_flight=in_flight,
    )
    try:
        inputs = _inputs(sdk.signature, config)
        await sdk.probe(inputs)
    except BaseException:
        await sdk.aclose()
        raise
    return sdk, config.store, sdk.signature, inputs


async def bench(
    config: BenchConfig,
    *,
    stop: asyncio.Event | None = None,
    progress: Progress | None = None,
    started: Started | None = None,
    report: list[BenchReport] | None = None,
) -> BenchReport:
    """Run the benchmark described by ``config``.

    Args:
        config: what to run.
        stop: set it to end the current step's window now and skip the rest.
        progress: see ``run_steps``.
        started: called with the (empty) report once the target answered its first call (and
            the generator processes are ready).
        report: the report is also appended to this list as soon as it exists, so that a
            caller interrupted hard still has the finished steps.

    Raises:
        BadInput: unknown model or version, or inputs that do not match the signature.
        Unreachable: nothing answers at the URL, or the store cannot be opened.
        GeneratorFailed: a generator process could not start, or failed during the run.
    """
    target, address, signature, inputs = await _target(config)
    pool: ProcessPool | None = None
    try:
        if config.processes > 1:
            pool = _pool(config, signature, inputs, address)
            await pool.begin()
        given = config.inputs is not None
        result = BenchReport(
            model=config.model,
            version=config.version,
            target="url" if config.url is not None else "sdk",
            address=address,
            encoding="binary" if config.binary else "json",
            batch=_rows(inputs) if given else config.batch,
            inputs=[{**d, "source": "given" if given else "drawn"} for d in describe(inputs)],
            warmup_s=config.warmup,
            duration_s=config.duration,
            processes=config.processes,
        )
        if report is not None:
            report.append(result)
        if started is not None:
            started(result)
        return await run_steps(
            target,
            config.steps,
            result,
            stop=stop,
            progress=progress,
            drain_timeout=config.timeout + 1,
            generator=pool,
        )
    finally:
        if pool is not None:
            await pool.aclose()
        await target.aclose()


def run(
    config: BenchConfig,
    *,
    progress: Progress | None = None,
    started: Started | None = None,
    on_interrupt: Callable[[], None] | None = None,
) -> BenchReport:
    """``bench`` on a new event loop (uvloop when installed), with Ctrl-C handled.

    The first SIGINT ends the current step's window (its figures are kept) and skips the rest;
    a second one cancels the calls in flight. Either way the report of what was measured is
    returned, with ``interrupted`` set.

    Raises:
        BadInput, Unreachable: see ``bench`` (nothing was measured).
        GeneratorFailed: see ``bench``.
    """
    return run_interruptible(
        lambda stop, holder: bench(
            config, stop=stop, progress=progress, started=started, report=holder
        ),
        on_interrupt,
    )
