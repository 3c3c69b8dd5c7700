"""A load generator as the runner drives it through a step, and the one that runs in this process.

Per step the runner calls ``start`` (the load begins), ``check`` as it waits, ``open`` when the
window opens (CPU counting starts), then ``close`` when it closes (CPU counting ends, sending
stops, the calls in flight finish, the samples are reduced to the window), or ``abort`` (stop
now, nothing kept).
``LocalGenerator`` runs the load loops on this process's event loop: it is the whole generator
of ``--processes 1``, and each child of a ``ProcessPool`` (``--processes N``) runs one.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from ._load import Send, closed_loop, open_loop
from ._report import Step
from ._stats import Samples
from ._window import WindowPart, window_part

__all__ = ["Clock", "Generator", "LocalGenerator", "StepLoad", "finish", "run_loop"]

Clock = Callable[[], float]
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class StepLoad:
    """What the generator's processes measured over a step's window, one item per process.

    Attributes:
        parts: each process's calls over the window (``merge_parts`` joins them).
        cpu_s: each process's CPU seconds over the window.
    """

    parts: tuple[WindowPart, ...]
    cpu_s: tuple[float, ...]


class Generator(Protocol):
    """What the runner drives through a step (see the module)."""

    @property
    def clock(self) -> Clock:
        """The clock of the samples and of the window (shared by every process)."""
        ...

    async def start(self, step: Step) -> float:
        """Begin the step's load; returns when it begins (``clock``), possibly just ahead."""
        ...

    def open(self) -> None:
        """The window opens now."""
        ...

    def check(self) -> None:
        """Raise if the generator cannot go on (called while the step runs)."""
        ...

    async def close(self, start: float, end: float) -> StepLoad:
        """The window ``[start, end]`` closed: stop sending, drain, reduce."""
        ...

    async def abort(self) -> None:
        """Stop the load now, keeping nothing; never raises."""
        ...


async def finish(task: asyncio.Task[None], timeout: float) -> None:
    """Let the load loop end (its calls in flight finish) for ``timeout`` s, then cancel it."""
    done, _ = await asyncio.wait({task}, timeout=timeout) if timeout > 0 else (set(), set())
    if not done:
        task.cancel()
        await asyncio.wait({task})
    elif (exc := task.exception()) is not None:
        raise exc


class LocalGenerator:
    """The load loops of one step at a time, on the running event loop.

    Args:
        send: one call.
        drain_timeout: how long the calls in flight may take to finish after a window.
        clock: the monotonic clock of the samples.
    """

    def __init__(self, send: Send, *, drain_timeout: float = 6.0, clock: Clock = time.perf_counter):
        self.clock = clock
        self._send = send
        self._drain_timeout = drain_timeout
        self._task: asyncio.Task[None] | None = None
        self._samples = Samples()
        self._sending = False
        self._by_intended = False
        self._cpu = 0.0

    def _running(self) -> bool:
        return self._sending

    async def start(self, step: Step) -> float:
        self._samples = samples = Samples()
        self._sending = True
        self._by_intended = step.rate is not None
        if step.concurrency is not None:
            load = closed_loop(
                self._send, step.concurrency, samples, self._running, clock=self.clock
            )
        else:
            assert step.rate is not None
            load = open_loop(
                self._send,
                step.rate,
                samples,
                self._running,
                max_in_flight=step.max_in_flight,
                clock=self.clock,
            )
        began = self.clock()
        self._task = asyncio.get_running_loop().create_task(load)
        return began

    def open(self) -> None:
        self._cpu = time.process_time()

    def check(self) -> None:
        """Nothing to check: the loops' own errors are raised by ``close``."""

    async def close(self, start: float, end: float) -> StepLoad:
        cpu = time.process_time() - self._cpu
        self._sending = False
        task, self._task = self._task, None
        if task is not None:
            await finish(task, self._drain_timeout)
        samples, self._samples = self._samples, Samples()  # freed with the step
        part = window_part(samples, start, end, by_intended=self._by_intended)
        return StepLoad((part,), (cpu,))

    async def abort(self) -> None:
        self._sending = False
        task, self._task = self._task, None
        if task is not None:
            await finish(task, 0.0)
        self._samples = Samples()


def run_loop(main: Coroutine[Any, Any, _T]) -> _T:
    """Run ``main`` on a new event loop: uvloop's when installed (the generator's own CPU per
    call is what limits how far it can push a server), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # uvloop comes with the server extra; asyncio's loop works, costs more CPU
        return asyncio.run(main)
    return uvloop.run(main)


class Interruptible(Protocol):
    """A report that can say it was cut short."""

    interrupted: bool


_R = TypeVar("_R", bound=Interruptible)


def run_interruptible(
    measure: Callable[[asyncio.Event, list[_R]], Awaitable[_R]],
    on_interrupt: Callable[[], None] | None = None,
) -> _R:
    """Run ``measure(stop, holder)`` on a new event loop (``run_loop``) with Ctrl-C handled:
    the first SIGINT sets ``stop`` (the current window ends, the rest is skipped), a second one,
    or one before ``measure`` put its report in ``holder``, cancels it. A report that exists is
    returned with ``interrupted`` set; none yet: KeyboardInterrupt."""
    holder: list[_R] = []

    async def main() -> _R:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        current = asyncio.current_task()

        def interrupt() -> None:
            if (stop.is_set() or not holder) and current is not None:
                current.cancel()
            stop.set()
            if on_interrupt is not None:
                on_interrupt()

        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGINT, interrupt)  # main thread only
        try:
            return await measure(stop, holder)
        except asyncio.CancelledError:
            if not holder:
                raise KeyboardInterrupt from None
            holder[0].interrupted = True
            return holder[0]
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGINT)

    return run_loop(main())
