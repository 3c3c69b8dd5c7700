"""What the parent and its generator processes say to each other, and the reader of a pipe.

Two one-way pipes per child (``os.pipe``; messages pickled, each after its length). The parent
writes commands; the child answers on the other pipe.
```
parent                                   child (python -m autoai.bench._child)
  ChildSpec  ─────────────────────────►  builds its own target (HTTP connections or SDK client)
             ◄───────────────────────── Ready            (or Failed: the run cannot start)
  per step:
  Start(step share, at) ──────────────►  starts its load at ``at`` (monotonic clock)
  Open ───────────────────────────────►  the window opened: CPU counting starts
  Close(start, end) ──────────────────►  CPU counting ends, stops sending, drains
             ◄───────────────────────── Done(its WindowPart, CPU seconds)
  or Abort ───────────────────────────►  stops now  ◄── Aborted
  end of file ────────────────────────►  the parent is done (or gone): the child exits
```
"""

from __future__ import annotations

import asyncio
import os
import pickle
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._report import Step
from ._window import WindowPart

__all__ = [
    "Abort",
    "Aborted",
    "ChildSpec",
    "Close",
    "Command",
    "Done",
    "Failed",
    "Inbox",
    "Open",
    "Ready",
    "Reply",
    "Start",
    "Writer",
    "read_message",
]


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """What a generator process needs to build its own target.

    Attributes:
        index: the process's number, 0 to N-1.
        model, version: what to call.
        url: one instance's ``http://HOST:PORT`` (direct), or ``None``.
        store: the config store URL (through the SDK), or ``None``.
        inputs: the request's tensors for this process.
        binary: binary tensors (else JSON).
        timeout: seconds per call.
        max_in_flight: the most calls this process has in flight in any step.
    """

    index: int
    model: str
    version: str | None
    url: str | None
    store: str | None
    inputs: dict[str, np.ndarray[Any, Any]] = field(repr=False)
    binary: bool
    timeout: float
    max_in_flight: int


@dataclass(frozen=True, slots=True)
class Start:
    step: Step
    at: float


@dataclass(frozen=True, slots=True)
class Open:
    pass


@dataclass(frozen=True, slots=True)
class Close:
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Abort:
    pass


@dataclass(frozen=True, slots=True)
class Ready:
    pass


@dataclass(frozen=True, slots=True)
class Done:
    part: WindowPart
    cpu_s: float


@dataclass(frozen=True, slots=True)
class Aborted:
    pass


@dataclass(frozen=True, slots=True)
class Failed:
    message: str


Command = ChildSpec | Start | Open | Close | Abort
Reply = Ready | Done | Aborted | Failed


_HEADER = struct.Struct("!Q")  # the length of the pickled message that follows
_CHUNK = 1 << 20


def _frame(message: Any) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


class Writer:
    """The writing end of a pipe: whole messages, blocking until written."""

    def __init__(self, fd: int):
        os.set_blocking(fd, True)
        self._fd: int | None = fd

    def send(self, message: Any) -> None:
        """Write ``message``.

        Raises:
            OSError: the pipe is closed (``BrokenPipeError``: the reader is gone).
        """
        if self._fd is None:
            raise BrokenPipeError("the pipe was closed here")
        data = memoryview(_frame(message))
        while data:
            data = data[os.write(self._fd, data) :]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_message(fd: int) -> Any:
    """The next message on the blocking pipe ``fd`` (before an event loop runs).

    Raises:
        EOFError: the writer closed the pipe.
    """

    def exactly(n: int) -> bytes:
        got = bytearray()
        while len(got) < n:
            chunk = os.read(fd, n - len(got))
            if not chunk:
                raise EOFError("the pipe was closed")
            got += chunk
        return bytes(got)

    (size,) = _HEADER.unpack(exactly(_HEADER.size))
    return pickle.loads(exactly(size))


class Inbox:
    """The messages arriving on the pipe ``fd``, read by the running event loop as they come.

    The pipe is made non-blocking and watched with ``loop.add_reader`` (POSIX): bytes are
    buffered until a message is whole, so a large one never blocks the loop. ``get`` returns
    ``None`` once the writer closed its end (or died).
    """

    def __init__(self, fd: int):
        os.set_blocking(fd, False)
        self._fd = fd
        self._buffer = bytearray()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._watching = True
        self._loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            chunk = os.read(self._fd, _CHUNK)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.stop()
            self._queue.put_nowait(None)
            return
        buffer = self._buffer
        buffer += chunk
        while len(buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer)
            end = _HEADER.size + size
            if len(buffer) < end:
                break
            self._queue.put_nowait(pickle.loads(buffer[_HEADER.size : end]))
            del buffer[:end]

    async def get(self) -> Any:
        """The next message, or ``None``: the other end is gone."""
        return await self._queue.get()

    def stop(self) -> None:
        """Stop watching the pipe."""
        if self._watching:
            self._loop.remove_reader(self._fd)
            self._watching = False

    def close(self) -> None:
        """Stop watching, and close the pipe."""
        self.stop()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
