"""``--processes N``: N generator processes run every step together; this one scrapes and merges.

One Python process cannot send more than a few thousand calls a second: against a server that
answers 10,000+, the generator would be the limit. Each child is ``python -m
autoai.bench._child`` of this interpreter (see ``_protocol`` for what they say), with its own
target, its share of the step's load (``split_step``) and its own event loop.

- Lock step: ``start`` sends every child the same start time, a moment ahead, on the host's
  monotonic clock (``time.monotonic``: one clock for every process of the host); each begins its
  share then. The window is this process's (its scrapes of ``/metrics``, the only ones), on the
  same clock, and every child reduces its samples to exactly that window: the parts line up
  however the children were scheduled, and ``merge_parts`` joins them.
- CPU: each child counts its own process's CPU time between ``Open`` and ``Close``.
- Ctrl-C: children run in a process group of their own, so a terminal's Ctrl-C reaches this
  process only; the runner ends the window and the children are told to stop.
- No orphans: ``aclose`` closes the command pipes (a child exits when it reads their end, which
  also happens when this process dies), waits a few seconds, then sends SIGTERM, then SIGKILL, to
  the PIDs it started that are still there.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ._errors import GeneratorFailed
from ._generator import Clock, StepLoad
from ._protocol import (
    Abort,
    Aborted,
    ChildSpec,
    Close,
    Command,
    Done,
    Failed,
    Inbox,
    Open,
    Ready,
    Start,
    Writer,
)
from ._report import Step
from ._split import split_step

__all__ = ["ProcessPool"]

_LEAD_S = 0.1
"""How far ahead a step's start is set: the children are idle, a command takes microseconds."""
_READY_TIMEOUT_S = 60.0
_REPLY_MARGIN_S = 60.0
"""Beyond the drain: time for a child to reduce a long window's samples and send them."""
_ABORT_TIMEOUT_S = 5.0
_EXIT_TIMEOUT_S = 5.0
_CHILD_MODULE = "autoai.bench._child"
_ROOT = str(Path(__file__).resolve().parents[2])  # where ``autoai`` is imported from

_R = TypeVar("_R", Ready, Done, Aborted)


@dataclass
class _Child:
    index: int
    process: subprocess.Popen[bytes]
    commands: Writer
    inbox: Inbox

    @property
    def name(self) -> str:
        return f"generator process {self.index} (pid {self.process.pid})"


def _spawn(index: int) -> _Child:
    commands_read, commands_write = os.pipe()  # not inherited but by the one child
    replies_read, replies_write = os.pipe()
    path = os.pathsep.join(filter(None, (_ROOT, os.environ.get("PYTHONPATH"))))
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", _CHILD_MODULE, str(commands_read), str(replies_write)],
            pass_fds=(commands_read, replies_write),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": path},
            process_group=0,
        )
    except OSError as exc:
        for fd in (commands_write, replies_read):
            os.close(fd)
        raise GeneratorFailed(f"cannot start a generator process: {exc}") from exc
    finally:
        os.close(commands_read)
        os.close(replies_write)
    return _Child(index, process, Writer(commands_write), Inbox(replies_read))


class ProcessPool:
    """N generator processes, driven as one ``Generator`` (see the module).

    Args:
        specs: one per process: what it calls, with which inputs.
        drain_timeout: how long the calls in flight may take to finish after a window.
    """

    def __init__(self, specs: Sequence[ChildSpec], *, drain_timeout: float = 6.0):
        self.clock: Clock = time.monotonic
        self._specs = list(specs)
        self._drain_timeout = drain_timeout
        self._children: list[_Child] = []
        self._loaded = False

    @property
    def pids(self) -> list[int]:
        """The PIDs of the processes started (and not yet ended by ``aclose``)."""
        return [c.process.pid for c in self._children]

    async def begin(self) -> None:
        """Start the processes; return once every one has built its target.

        Raises:
            GeneratorFailed: a process could not start or build its target (the message says
                why); call ``aclose`` either way.
        """
        for spec in self._specs:
            child = _spawn(spec.index)
            self._children.append(child)
            self._send(child, spec)
        await self._replies(Ready, _READY_TIMEOUT_S)

    def _send(self, child: _Child, command: Command) -> None:
        try:
            child.commands.send(command)
        except OSError as exc:
            raise GeneratorFailed(f"{child.name} is gone: {exc}") from exc

    async def _reply(self, child: _Child, kind: type[_R], timeout: float) -> _R:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    message = await child.inbox.get()
                    if isinstance(message, kind):
                        return message
                    if not isinstance(message, Aborted):  # late answer to an earlier abort
                        break
        except TimeoutError:
            raise GeneratorFailed(f"{child.name} did not answer in {timeout:g} s") from None
        if isinstance(message, Failed):
            raise GeneratorFailed(f"{child.name}: {message.message}")
        if message is None:
            code = await _exit_code(child.process)
            how = f" with exit code {code}" if code is not None else ""
            raise GeneratorFailed(f"{child.name} ended{how}")
        raise GeneratorFailed(f"{child.name} answered {message!r} out of place")

    async def _replies(self, kind: type[_R], timeout: float) -> list[_R]:
        found = await asyncio.gather(
            *(self._reply(c, kind, timeout) for c in self._children), return_exceptions=True
        )
        for item in found:
            if isinstance(item, BaseException):
                raise item
        return [item for item in found if not isinstance(item, BaseException)]

    # Generator
    async def start(self, step: Step) -> float:
        shares = split_step(step, len(self._children))
        at = self.clock() + _LEAD_S
        self._loaded = True
        for child, share in zip(self._children, shares, strict=True):
            self._send(child, Start(share, at))
        return at

    def open(self) -> None:
        for child in self._children:
            self._send(child, Open())

    def check(self) -> None:
        """Raises ``GeneratorFailed`` as soon as a process has ended (it would else be found
        only when the window closes)."""
        for child in self._children:
            if (code := child.process.poll()) is not None:
                raise GeneratorFailed(f"{child.name} ended with exit code {code}")

    async def close(self, start: float, end: float) -> StepLoad:
        for child in self._children:
            self._send(child, Close(start, end))
        done = await self._replies(Done, self._drain_timeout + _REPLY_MARGIN_S)
        self._loaded = False
        return StepLoad(tuple(d.part for d in done), tuple(d.cpu_s for d in done))

    async def abort(self) -> None:
        if not self._loaded:
            return
        self._loaded = False
        told = []
        for child in self._children:
            try:
                self._send(child, Abort())
            except GeneratorFailed:
                continue
            told.append(self._reply(child, Aborted, _ABORT_TIMEOUT_S))
        await asyncio.gather(*told, return_exceptions=True)

    async def aclose(self) -> None:
        """End every process: close the command pipes, wait, then SIGTERM and SIGKILL by PID."""
        children, self._children = self._children, []
        for child in children:
            child.inbox.stop()
            child.commands.close()  # the child reads the end of the pipe and exits
        try:
            deadline = time.monotonic() + _EXIT_TIMEOUT_S
            while time.monotonic() < deadline and any(c.process.poll() is None for c in children):
                await asyncio.sleep(0.02)
        finally:
            _end(children)


async def _exit_code(process: subprocess.Popen[bytes]) -> int | None:
    """The exit code of a process whose pipe just closed (it may take a moment to exit)."""
    for _ in range(50):
        if (code := process.poll()) is not None:
            return code
        await asyncio.sleep(0.02)
    return None


def _end(children: Sequence[_Child]) -> None:
    """SIGTERM, then SIGKILL, the processes still there (the PIDs started here), and reap them."""
    for child in children:
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.process.wait(2.0)
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()
        child.inbox.close()
