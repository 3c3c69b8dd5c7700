"""One generator process of ``--processes N``: ``python -m autoai.bench._child READ_FD WRITE_FD``.

Started by ``ProcessPool`` with two pipe ends (commands in, replies out; see ``_protocol``). It
builds its own target from the ``ChildSpec`` (its own HTTP connections or SDK client: nothing
is shared with the parent), answers ``Ready``, then runs the steps it is told to with a
``LocalGenerator`` on the host's monotonic clock. It exits when the parent closes the command
pipe, or dies: no generator outlives its parent's run.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time

from ._direct import DirectTarget
from ._errors import BenchError
from ._generator import LocalGenerator, run_loop
from ._heap import map_big_blocks, trim_heap
from ._protocol import (
    Abort,
    Aborted,
    ChildSpec,
    Close,
    Done,
    Failed,
    Inbox,
    Open,
    Ready,
    Start,
    Writer,
    read_message,
)
from ._sdk import SdkTarget

__all__ = ["main", "serve"]


async def _target(spec: ChildSpec) -> DirectTarget | SdkTarget:
    """The process's own target; the parent probed the same one, so no call is made here."""
    if spec.url is not None:
        return DirectTarget(
            spec.url,
            spec.model,
            spec.version,
            spec.inputs,
            binary=spec.binary,
            timeout=spec.timeout,
        )
    assert spec.store is not None
    sdk = await SdkTarget.open(
        spec.store,
        spec.model,
        spec.version,
        binary=spec.binary,
        timeout=spec.timeout,
        max_in_flight=spec.max_in_flight,
    )
    sdk.use(spec.inputs)
    return sdk


async def serve(commands: int, replies: Writer, spec: ChildSpec) -> None:
    """Answer the parent's commands (on the pipe ``commands``) until it closes that pipe.

    Raises:
        BenchError: the target cannot be built.
        RuntimeError: a command out of place.
    """
    inbox = Inbox(commands)
    target = await _target(spec)
    generator = LocalGenerator(target.send, drain_timeout=spec.timeout + 1, clock=time.monotonic)
    try:
        replies.send(Ready())
        while (command := await inbox.get()) is not None:
            if isinstance(command, Start):
                await asyncio.sleep(max(0.0, command.at - time.monotonic()))
                await generator.start(command.step)
            elif isinstance(command, Open):
                generator.open()
            elif isinstance(command, Close):
                load = await generator.close(command.start, command.end)
                replies.send(Done(load.parts[0], load.cpu_s[0]))
                del load
                trim_heap()  # the step's samples and their copies are freed by now
            elif isinstance(command, Abort):
                await generator.abort()
                replies.send(Aborted())
            else:
                raise RuntimeError(f"unexpected command {command!r}")  # a bug, not a user error
    finally:
        inbox.close()
        await generator.abort()
        await target.aclose()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BenchError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def main(argv: list[str]) -> int:
    """The process's entry point: ``argv`` holds the command and reply file descriptors."""
    # Ctrl-C belongs to the parent (it ends the step, then tells us); the parent also starts us
    # in a process group of our own so that a terminal's Ctrl-C does not reach us at all.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    commands, replies = int(argv[0]), Writer(int(argv[1]))
    try:
        spec = read_message(commands)
        if not isinstance(spec, ChildSpec):
            raise RuntimeError(f"expected a ChildSpec, got {spec!r}")
        map_big_blocks()
        run_loop(serve(commands, replies, spec))
    except EOFError:  # the parent went away before it said anything
        return 1
    except Exception as exc:
        try:
            replies.send(Failed(_describe(exc)))
        except OSError:  # the parent is gone: nobody to tell
            pass
        return 1
    finally:
        replies.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
