"""``--url``: load straight to one instance, with a lean HTTP/1.1 sender of one pre-encoded request.

A load generator sends the same request again and again, so the body is encoded once (binary
tensors by default) and every call is one ``transport.write`` of the same bytes and one answer
parsed by ``httptools`` on an ``asyncio.Protocol`` of a keep-alive connection (one connection
per call in flight, kept between calls). Only the status is read on the hot path; the answer of
a first, probing call is decoded in full with ``eas_client``'s codec, so a model that answers
garbage is found before the run. ``AsyncEasClient`` spends about four times the CPU per call
(retries, balancing, decoding): enough for the generator, not the server, to set the pace on a
small machine (see ``benchmarks/bench/generator_cpu.py``).

Errors are ``eas_client``'s: ``ServerError.from_status`` for a non-200 answer, ``ConnectError``
and ``TimeoutException`` for transport failures.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from time import monotonic
from typing import Any, cast
from urllib.parse import quote, urlsplit

import httptools
import httpx
import numpy as np

from eas_client import (
    ConnectError,
    ProtocolError,
    ServerError,
    TimeoutException,
    decode_error,
    decode_response,
    encode_request,
)

from ._errors import BadInput, Unreachable

__all__ = ["DirectTarget", "base_url", "fetch_metadata"]

_CONNECT_TIMEOUT_S = 2.0


def base_url(url: str) -> tuple[str, str, int]:
    """``http://host:port`` -> ``(origin, host, port)``.

    Raises:
        BadInput: not an ``http://HOST:PORT`` URL (TLS and paths are not supported).
    """
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise BadInput(f"--url {url!r}: expected http://HOST:PORT of one instance")
    host = parts.hostname
    return f"http://{f'[{host}]' if ':' in host else host}:{port}", host, port


def _model_path(model: str, version: str | None) -> str:
    path = f"/v2/models/{quote(model, safe='')}"
    return path if version is None else f"{path}/versions/{quote(version, safe='')}"


def _error_text(response: httpx.Response) -> str:
    return decode_error(response.content)


async def fetch_metadata(origin: str, model: str, version: str | None) -> Any:
    """The instance's OIP metadata of the model (``GET /v2/models/{name}[/versions/{v}]``).

    Raises:
        Unreachable: nothing answers at ``origin``.
        BadInput: the instance does not serve the model (or version), or answers an error.
    """
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as http:
        try:
            answer = await http.get(origin + _model_path(model, version))
        except httpx.HTTPError as exc:
            raise Unreachable(
                f"nothing answers at {origin}: {exc or type(exc).__name__}", origin
            ) from exc
    if answer.status_code != 200:
        raise BadInput(
            f"{origin} refuses model {model!r} (HTTP {answer.status_code}): {_error_text(answer)}"
        )
    try:
        return answer.json()
    except ValueError:
        raise BadInput(f"{origin} answered metadata that is not JSON") from None


class _Connection(asyncio.Protocol):
    """One keep-alive connection; at most one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.chunks: list[bytes] = []
        self.status = 0
        self.sent_at = 0.0  # time.monotonic() of the exchange in flight, for the watchdog
        self.started = False  # a byte of the current answer arrived
        self.used = False  # an exchange completed on it: it was kept alive since
        self.open = True
        self.keep_alive = True

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        self.started = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(ConnectionResetError(f"malformed HTTP answer: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.fail(ConnectionResetError("the instance closed the connection"))

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        self.used = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            chunks = self.chunks
            waiter.set_result((self.status, chunks[0] if len(chunks) == 1 else b"".join(chunks)))

    # ours
    def fail(self, exc: BaseException) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def exchange(self, message: bytes, now: float) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None and self.loop is not None
        self.chunks.clear()
        self.started = False
        self.sent_at = now
        waiter = self.waiter = self.loop.create_future()
        self.transport.write(message)
        return waiter

    def close(self) -> None:
        self.open = False
        if self.transport is not None:
            self.transport.close()


class DirectTarget:
    """Calls of one instance with one pre-encoded request.

    Args:
        url: the instance, ``http://HOST:PORT``.
        model, version: what to call (``version`` None: the instance's).
        inputs: the request's tensors.
        binary: binary tensors (else JSON) in the request and the answer.
        timeout: seconds per call.

    Raises:
        BadInput: a bad URL, or tensors the protocol cannot carry.
    """

    kind = "url"

    def __init__(
        self,
        url: str,
        model: str,
        version: str | None,
        inputs: Mapping[str, np.ndarray[Any, Any]],
        *,
        binary: bool = True,
        timeout: float = 5.0,
    ):
        self.origin, self._host, self._port = base_url(url)
        self.address = self.origin
        self._path = _model_path(model, version) + "/infer"
        try:
            body, length = encode_request(inputs, binary_inputs=binary, binary_outputs=binary)
        except ProtocolError as exc:
            raise BadInput(f"--input: {exc}") from None
        self._body = body
        self._headers = {
            "content-type": "application/octet-stream" if length is not None else "application/json"
        }
        if length is not None:
            self._headers["inference-header-content-length"] = str(length)
        head = "".join(f"{k}: {v}\r\n" for k, v in self._headers.items())
        self._message = (
            f"POST {self._path} HTTP/1.1\r\nhost: {self._host}:{self._port}\r\n{head}"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode("latin-1") + body
        self._timeout = timeout
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()
        self._watchdog: asyncio.Task[None] | None = None

    async def probe(self) -> dict[str, np.ndarray[Any, Any]]:
        """One call through httpx, its answer decoded in full: the outputs.

        Raises:
            Unreachable: no answer.
            BadInput: the instance refuses the request (the server's message) or answers
                something that does not decode.
        """
        async with httpx.AsyncClient(timeout=self._timeout, trust_env=False) as http:
            try:
                answer = await http.post(
                    self.origin + self._path, content=self._body, headers=self._headers
                )
            except httpx.HTTPError as exc:
                raise Unreachable(
                    f"nothing answers at {self.origin}: {exc or type(exc).__name__}", self.origin
                ) from exc
        if answer.status_code != 200:
            status, text = answer.status_code, _error_text(answer)
            raise BadInput(f"{self.origin} refuses the request (HTTP {status}): {text}")
        try:
            return decode_response(
                answer.content, answer.headers.get("inference-header-content-length")
            ).outputs
        except ProtocolError as exc:
            raise BadInput(f"{self.origin} answered a malformed response: {exc}") from None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                _, protocol = await loop.create_connection(_Connection, self._host, self._port)
        except TimeoutError as exc:
            raise TimeoutException(
                f"connecting to {self.origin} timed out", url=self.origin
            ) from exc
        except OSError as exc:
            raise ConnectError(f"cannot connect to {self.origin}: {exc}", url=self.origin) from exc
        self._all.add(protocol)
        return protocol

    async def send(self) -> None:
        """One call; raises ``eas_client`` errors (see the module)."""
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())
        idle = self._idle
        connection = idle.pop() if idle else await self._connect()
        try:
            status, body = await connection.exchange(self._message, monotonic())
        except BaseException as exc:
            connection, status, body = await self._failed(connection, exc)
        if connection.open and connection.keep_alive:
            idle.append(connection)
        else:
            self._drop(connection)
        if status != 200:
            raise ServerError.from_status(status, decode_error(body))

    async def _failed(
        self, connection: _Connection, exc: BaseException
    ) -> tuple[_Connection, int, bytes]:
        """The slow path: convert the error, or try once more on a fresh connection when a
        kept-alive one was closed by the instance while idle (its keep-alive timeout); then the
        fresh connection and its answer."""
        self._drop(connection)
        if isinstance(exc, TimeoutError):
            raise TimeoutException(
                f"no answer from {self.origin} in time", url=self.origin
            ) from exc
        if not isinstance(exc, ConnectionError):
            raise exc
        if connection.started or not connection.used:
            raise ConnectError(f"{self.origin}: {exc}", url=self.origin) from exc
        again = await self._connect()
        try:
            status, body = await again.exchange(self._message, monotonic())
        except BaseException as retry:
            self._drop(again)
            if isinstance(retry, TimeoutError):
                raise TimeoutException(
                    f"no answer from {self.origin} in time", url=self.origin
                ) from retry
            if isinstance(retry, ConnectionError):
                raise ConnectError(f"{self.origin}: {retry}", url=self.origin) from retry
            raise
        return again, status, body

    async def _watch(self) -> None:
        """Fail the calls that have waited longer than the timeout (one task for all calls:
        a timer per call costs about as much CPU as the rest of the call)."""
        period = min(0.25, self._timeout / 4)
        while True:
            await asyncio.sleep(period)
            late = monotonic() - self._timeout
            for connection in list(self._all):
                if connection.waiter is not None and connection.sent_at < late:
                    connection.fail(TimeoutError("no answer in time"))
                    connection.close()

    def _drop(self, connection: _Connection) -> None:
        connection.close()
        self._all.discard(connection)

    async def instances(self) -> list[str]:
        """The instance whose ``/metrics`` tell the server side: the URL itself."""
        return [self.origin]

    async def aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        for connection in list(self._all):
            connection.close()
        self._all.clear()
        self._idle.clear()
