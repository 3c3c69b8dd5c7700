"""The wire pools: HTTP/1.1 keep-alive connections to one instance, parsed by ``httptools``.

An inference call is one POST with a known body and one answer with a ``Content-Length`` (or
chunked) body. httpx spends most of a small call's CPU on generality this path does not need (URL
and header models, h11's state machine, tracing hooks): about 1 ms of Python per call on this
project's 2-core machine against ~0.25 ms for a bare socket. This module keeps only what the call
needs: a bounded pool of sockets per instance and httptools' C parser for the answer. The parsing
is shared; ``SyncPool`` and ``AsyncPool`` differ only in how they wait.

A reused keep-alive connection may have been closed by the server while idle (uvicorn closes
after 5 s); when such a connection fails before any byte of the answer arrived, the request is
sent once more on a fresh connection (inference has no side effects). Inside a pool everything
else surfaces as ``OSError`` (refused, reset, dropped), ``TimeoutError``, or ``BadAnswer``;
``send``, the pool's side of the transport interface (``eas_client._transport``), converts them
into ours there, once: ``TimeoutException`` for timeouts, ``ConnectError`` for the rest (a
malformed answer or one cut short included: retried on another instance).

TLS is not handled here: ``https`` instances and injected transports go through httpx.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import threading
import time
from typing import Final

import httptools

from ._errors import ConnectError, TimeoutException
from ._transport import Reply, Request, transport_error

__all__ = ["AsyncPool", "BadAnswer", "PoolTimeout", "SyncPool", "request_head"]

_READ: Final = 65536
_NO_HEADERS: Final[dict[str, str]] = {}


class BadAnswer(OSError):
    """The instance's answer is not valid HTTP/1.1 (or the connection closed mid-answer)."""


class PoolTimeout(TimeoutError):
    """Every connection of the instance's pool stayed busy until the deadline."""


class _Reader:
    """httptools callbacks collecting one answer."""

    __slots__ = ("body", "done", "headers", "keep_alive", "parser", "started")

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.done = False
        self.keep_alive = False
        self.started = False
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.started = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        # Read here: once the message is complete the parser resets and forgets it.
        self.keep_alive = self.parser.should_keep_alive()
        self.done = True

    def feed(self, data: bytes) -> bool:
        """Parse ``data``; True once the answer is complete."""
        if not data:
            raise BadAnswer(
                "the instance closed the connection before answering"
                if not self.started
                else "the instance closed the connection in the middle of its answer"
            )
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise BadAnswer(f"malformed HTTP answer: {exc}") from exc
        return self.done

    def reply(self) -> tuple[Reply, bool]:
        """The answer, and whether the connection may be reused."""
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        reply = Reply(self.parser.get_status_code(), self.headers, body)
        return reply, self.keep_alive


def request_head(method: str, path: str, host: str, headers: dict[str, str]) -> bytes:
    """The request line and fixed headers, up to (not including) ``content-length``."""
    lines = [f"{method} {path} HTTP/1.1", f"host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")


def _message(head: bytes, headers: dict[str, str], body: bytes) -> list[bytes]:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return [head, f"{extra}content-length: {len(body)}\r\n\r\n".encode("latin-1"), body]


def _head(request: Request) -> bytes:
    origin = request.origin  # http://host:port, the pool's instance
    return request_head("POST", request.url[len(origin) :], origin[7:], request.headers)


class SyncPool:
    """Blocking keep-alive connections to one instance, at most ``limit`` at a time."""

    def __init__(self, host: str, port: int, limit: int):
        self.host = host
        self.port = port
        self._idle: collections.deque[socket.socket] = collections.deque()
        self._slots = threading.BoundedSemaphore(limit)
        self._closed = False

    def send(self, request: Request) -> Reply:
        """``Transport.send`` for this instance: ``request``, with our errors."""
        deadline = time.monotonic() + request.timeout
        try:
            return self.request(
                _head(request), _NO_HEADERS, request.body, deadline, request.connect
            )
        except TimeoutError as exc:
            raise transport_error(TimeoutException, exc, request.url) from exc
        except OSError as exc:
            raise transport_error(ConnectError, exc, request.url) from exc

    def _connect(self, timeout: float) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=max(timeout, 1e-3))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def request(
        self,
        head: bytes,
        headers: dict[str, str],
        body: bytes,
        deadline: float,
        connect_timeout: float,
    ) -> Reply:
        """Send one request and read its answer before ``deadline`` (``time.monotonic``).

        Raises:
            OSError: refused, reset or dropped (``BadAnswer`` for a malformed answer).
            TimeoutError: no answer in time (``PoolTimeout``: no free connection in time).
        """
        if not self._slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise PoolTimeout(f"no free connection to {self.host}:{self.port} in time")
        try:
            message = _message(head, headers, body)
            while True:
                try:
                    sock, reused = self._idle.pop(), True
                except IndexError:
                    remaining = deadline - time.monotonic()
                    sock, reused = self._connect(min(remaining, connect_timeout)), False
                reader = _Reader()
                try:
                    reply, keep = self._exchange(sock, message, reader, deadline)
                except TimeoutError:
                    sock.close()
                    raise
                except OSError:
                    sock.close()
                    if reused and not reader.started:
                        continue  # closed while idle: once more on a fresh connection
                    raise
                if keep and not self._closed:
                    self._idle.append(sock)
                else:
                    sock.close()
                return reply
        finally:
            self._slots.release()

    @staticmethod
    def _exchange(
        sock: socket.socket, message: list[bytes], reader: _Reader, deadline: float
    ) -> tuple[Reply, bool]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the deadline passed before sending")
        sock.settimeout(remaining)
        sock.sendmsg(message)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no complete answer before the deadline")
            sock.settimeout(remaining)
            if reader.feed(sock.recv(_READ)):
                return reader.reply()

    def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()


class AsyncPool:
    """asyncio keep-alive connections to one instance, at most ``limit`` at a time.

    Bound to the event loop that first uses it (like any asyncio object).
    """

    def __init__(self, host: str, port: int, limit: int):
        self.host = host
        self.port = port
        self._idle: collections.deque[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            collections.deque()
        )
        self._limit = limit
        self._slots: asyncio.Semaphore | None = None
        self._closed = False

    async def send(self, request: Request) -> Reply:
        """``AsyncTransport.send`` for this instance: ``request``, with our errors."""
        deadline = time.monotonic() + request.timeout
        try:
            return await self.request(
                _head(request), _NO_HEADERS, request.body, deadline, request.connect
            )
        except TimeoutError as exc:
            raise transport_error(TimeoutException, exc, request.url) from exc
        except OSError as exc:
            raise transport_error(ConnectError, exc, request.url) from exc

    async def request(
        self,
        head: bytes,
        headers: dict[str, str],
        body: bytes,
        deadline: float,
        connect_timeout: float,
    ) -> Reply:
        """See ``SyncPool.request``; ``deadline`` is on ``time.monotonic``."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._limit)
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self._slots.acquire()
        except TimeoutError:
            raise PoolTimeout(f"no free connection to {self.host}:{self.port} in time") from None
        try:
            message = b"".join(_message(head, headers, body))
            while True:
                try:
                    stream, reused = self._idle.pop(), True
                except IndexError:
                    remaining = min(deadline - time.monotonic(), connect_timeout)
                    async with asyncio.timeout(max(remaining, 1e-3)):
                        stream = await asyncio.open_connection(self.host, self.port)
                    reused = False
                    sock = stream[1].get_extra_info("socket")
                    if sock is not None:
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                reader = _Reader()
                try:
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        reply, keep = await self._exchange(stream, message, reader)
                except TimeoutError:
                    stream[1].close()
                    raise
                except OSError:
                    stream[1].close()
                    if reused and not reader.started:
                        continue
                    raise
                if keep and not self._closed:
                    self._idle.append(stream)
                else:
                    stream[1].close()
                return reply
        finally:
            self._slots.release()

    @staticmethod
    async def _exchange(
        stream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        message: bytes,
        reader: _Reader,
    ) -> tuple[Reply, bool]:
        rd, wr = stream
        wr.write(message)
        await wr.drain()
        while True:
            if reader.feed(await rd.read(_READ)):
                return reader.reply()

    def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop()[1].close()

    async def aclose(self) -> None:
        self.close()
