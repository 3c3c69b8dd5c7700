"""The executor's side: start the front end processes, feed their requests to the batcher,
answer their queries, and notice when one dies.

The executor holds the port (bound with ``SO_REUSEPORT`` but not listening, so the kernel hands
every connection to a front end), the sessions, the one dynamic batcher that every front end
feeds (batches fill across front ends), the metrics and the registration. A front end that exits
without being told to is a crash: ``on_crash`` is called once and the instance goes down whole
(deregistered first), so no half-alive instance stays in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, cast

import orjson

from .._app import EasApp
from .._errors import EasServerError, ModelLoadError
from ._process import reuseport_socket
from ._remote import model_to_json
from ._wire import Buffer, FrameReader, Kind, decode_tensors, encode_tensors, frame

__all__ = ["FrontendHub"]

log = logging.getLogger("eas_server.frontends")


class _Link(asyncio.Protocol):
    """The executor's end of one front end's socket."""

    def __init__(self, hub: FrontendHub, index: int, proc: subprocess.Popen[bytes]):
        self.hub = hub
        self.index = index
        self.proc = proc
        self.listening = asyncio.get_running_loop().create_future()
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self._reader = FrameReader()
        self._transport: asyncio.Transport | None = None
        self._out: list[Buffer] = []
        self._flushing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        for task in self.tasks.values():
            task.cancel()
        if not self.listening.done():
            self.listening.set_exception(ConnectionError("the front end exited before listening"))
        self.hub._lost(self)

    def data_received(self, data: bytes) -> None:
        app = self.hub.app
        for kind, rid, payload in self._reader.feed(data):
            if kind == Kind.INFER:
                self.hub.last_request = time.monotonic()
                meta, arrays = decode_tensors(payload)
                task = asyncio.get_running_loop().create_task(self._infer(rid, meta, arrays))
                self.tasks[rid] = task
            elif kind == Kind.OBSERVE:
                for entry in orjson.loads(payload):
                    if entry[0] is None:
                        app.on_success(entry[1], entry[2], entry[3])
                    else:
                        app.on_failure(entry[0], entry[1])
            elif kind == Kind.CANCEL:
                running = self.tasks.get(rid)
                if running is not None:
                    running.cancel()
            elif kind == Kind.QUERY:
                asyncio.get_running_loop().create_task(self._query(rid, bytes(payload)))
            elif kind == Kind.LISTENING and not self.listening.done():
                self.listening.set_result(None)

    async def _infer(self, rid: int, meta: dict[str, Any], arrays: dict[str, Any]) -> None:
        wanted = meta["o"]
        try:
            result = await self.hub.app.submit(
                arrays,
                priority=meta["p"],
                timeout_s=meta["t"],
                outputs=None if wanted is None else frozenset(wanted),
            )
            outputs = (
                result.outputs
                if wanted is None
                else {name: result.outputs[name] for name in wanted}
            )
            head = {"q": result.queue_s, "c": result.compute_s, "b": result.batch_rows}
            self.send(frame(Kind.RESULT, rid, *encode_tensors(head, outputs)))
        except asyncio.CancelledError:
            pass
        except EasServerError as exc:
            self._error(rid, type(exc).__name__, str(exc))
        except Exception as exc:
            log.exception("request from front end %d failed", self.index)
            self._error(rid, "ProcessorError", f"{type(exc).__name__}: {exc}")
        finally:
            self.tasks.pop(rid, None)

    def _error(self, rid: int, kind: str, message: str) -> None:
        self.send(frame(Kind.ERROR, rid, orjson.dumps({"e": kind, "m": message})))

    async def _query(self, rid: int, what: bytes) -> None:
        app = self.hub.app
        body = await (app.stats_document() if what == b"stats" else app.metrics_document())
        self.send(frame(Kind.ANSWER, rid, body))

    def send(self, buffers: list[Buffer]) -> None:
        """Queue frames; they go out together at the end of this event-loop turn."""
        self._out.extend(buffers)
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flushing = False
        if self._transport is not None and self._out:
            self._transport.writelines(self._out)
        self._out = []


class FrontendHub:
    """Front end processes serving one address for an executor.

    Args:
        app: the executor's in-process application (batcher, metrics, documents).
        options: the ``OipApp`` options the front ends build their application with.
        count: front end processes.
        host, port: the address (port 0: a free one).
        drain_timeout_s: how long a front end may take to finish in-flight requests on STOP.
        log_level: the front ends' logging level.
        on_crash: called once, with the reason, when a front end exits unasked.
    """

    def __init__(
        self,
        app: EasApp,
        options: dict[str, Any],
        *,
        count: int,
        host: str,
        port: int,
        drain_timeout_s: float,
        log_level: str,
        on_crash: Callable[[str], None],
    ):
        self.app = app
        self.count = count
        self.host = host
        self.port = port
        self.last_request = time.monotonic()
        """When a front end last handed over a request (monotonic), for the SIGTERM drain."""
        self._options = options
        self._drain_timeout_s = drain_timeout_s
        self._log_level = log_level
        self._on_crash = on_crash
        self._links: list[_Link] = []
        self._holder: socket.socket | None = None
        self._stopping = False
        self._crashed = False

    @property
    def pids(self) -> list[int]:
        return [link.proc.pid for link in self._links]

    @property
    def busy(self) -> bool:
        """Requests handed over and not answered yet."""
        return any(link.tasks for link in self._links)

    async def start(self, timeout_s: float = 120.0) -> int:
        """Start the front ends; returns the port once every one listens.

        Raises:
            OSError: the address cannot be bound.
            ModelLoadError: a front end exited or did not listen within ``timeout_s``.
        """
        self._holder = reuseport_socket(self.host, self.port, listen=False)
        self.port = self._holder.getsockname()[1]
        loop = asyncio.get_running_loop()
        hello = {
            "model": model_to_json(self.app.model),
            "options": self._options,
            "drain_timeout_s": self._drain_timeout_s,
            "ready": self.app.ready,
        }
        for index in range(self.count):
            ours, theirs = socket.socketpair()
            cmd = [sys.executable, "-m", "eas_server.frontends", "--fd", str(theirs.fileno())]
            cmd += ["--host", self.host, "--port", str(self.port), "--log-level", self._log_level]
            proc = subprocess.Popen(cmd, pass_fds=[theirs.fileno()])
            theirs.close()
            link = _Link(self, index, proc)
            await loop.connect_accepted_socket(lambda link=link: link, ours)  # type: ignore[misc]
            self._links.append(link)
            link.send(frame(Kind.HELLO, 0, orjson.dumps(hello)))
        try:
            await asyncio.wait_for(
                asyncio.gather(*(link.listening for link in self._links)), timeout_s
            )
        except (TimeoutError, ConnectionError) as exc:
            await self.stop(0)
            why = "did not listen in time" if isinstance(exc, TimeoutError) else str(exc)
            raise ModelLoadError(f"front end processes failed to start: {why}") from exc
        try:
            await self._check_connections(timeout_s=5.0)
        except (OSError, TimeoutError) as exc:
            await self.stop(0)
            raise ModelLoadError(
                f"front end processes listen, but connections to {self.host}:{self.port} are not "
                f"all answered ({exc!r}): this system may not spread SO_REUSEPORT connections "
                "over processes; start with --frontends 1"
            ) from exc
        log.info("%d front ends on %s:%d: pids %s", self.count, self.host, self.port, self.pids)
        return self.port

    async def _check_connections(self, timeout_s: float) -> None:
        """Open a few connections and ask each for liveness: every one must be answered by some
        front end (none may land on the executor's non-listening holder of the port)."""

        async def ask() -> None:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            try:
                writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: eas\r\n\r\n")
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise OSError(f"liveness answered {head[:40]!r}")
            finally:
                writer.close()

        await asyncio.wait_for(asyncio.gather(*(ask() for _ in range(4 * self.count))), timeout_s)

    def set_ready(self, ready: bool) -> None:
        """Tell every front end whether to answer ready (health, model ready)."""
        for link in self._links:
            link.send(frame(Kind.STATE, 0, b"1" if ready else b"0"))

    async def stop(self, timeout_s: float) -> None:
        """STOP every front end (they finish what is in flight), wait, then kill stragglers."""
        self._stopping = True
        for link in self._links:
            link.send(frame(Kind.STOP, 0))
        deadline = time.monotonic() + timeout_s
        for link in self._links:
            try:
                await asyncio.to_thread(link.proc.wait, max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("front end %d did not stop in time: killing it", link.proc.pid)
                link.proc.kill()
                await asyncio.to_thread(link.proc.wait)
        if self._holder is not None:
            self._holder.close()
            self._holder = None

    def kill(self) -> None:
        """Kill every front end now (the executor is going down on a crash)."""
        self._stopping = True
        for link in self._links:
            with contextlib.suppress(ProcessLookupError):
                link.proc.kill()

    def _lost(self, link: _Link) -> None:
        if self._stopping or self._crashed:
            return
        self._crashed = True
        code = link.proc.poll()
        why = f"exit status {code}" if code is not None else "closed its link"
        self._on_crash(f"front end {link.index} (pid {link.proc.pid}) went away ({why})")
