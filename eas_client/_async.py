"""``AsyncEasClient``: the asyncio (anyio) client. I/O only; every decision is made in ``_base``.

The store is blocking (kazoo, sqlite): opening it, watching and the first read run in a worker
thread, on first use (``async with`` or the first ``infer``). Discovery callbacks arrive on store
threads and only swap the balancer's instance set under its lock, which never blocks the loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

import anyio
import anyio.to_thread
import httpx
import numpy as np

from ._balancer import RetryBudget
from ._base import _BaseEasClient, _StreamCall
from ._errors import EasClientError
from ._generate import GenerateChunk, GenerateRequest, GenerateResult
from ._httpx import AsyncHttpxTransport, _error
from ._instances import AsyncInstances
from ._metrics import ClientMetrics
from ._transport import AsyncTransport, Reply, Request

if TYPE_CHECKING:
    from config_store import ConfigStore

__all__ = ["AsyncEasClient"]

T = TypeVar("T")


def _timeouts(request: Request) -> httpx.Timeout:
    return httpx.Timeout(
        connect=request.connect, read=request.timeout, write=request.timeout, pool=request.pool
    )


@contextlib.asynccontextmanager
async def _opened(http: httpx.AsyncClient, request: Request) -> AsyncIterator[httpx.Response]:
    """POST ``request`` and hold its answer open (closed on exit: the server sees the
    disconnect when the body was not read to its end)."""
    try:
        response = await http.send(
            http.build_request(
                "POST",
                request.url,
                content=request.body,
                headers=request.headers,
                timeout=_timeouts(request),
            ),
            stream=True,
        )
    except httpx.HTTPError as exc:
        raise _error(exc, request.url) from exc
    try:
        yield response
    finally:
        await response.aclose()


async def _whole(response: httpx.Response, url: str) -> Reply:
    try:
        content = await response.aread()
    except httpx.HTTPError as exc:
        raise _error(exc, url) from exc
    return Reply(response.status_code, response.headers, content)


class AsyncEasClient(_BaseEasClient):
    """The asynchronous twin of :class:`eas_client.EasClient`: same arguments, same behaviour.

    ```python
    async with AsyncEasClient(store="sqlite:///var/lib/autoai/store.db", service="m-3") as c:
        out = await c.infer({"x": x})
    ```

    Safe to share between tasks of one event loop. ``transport`` is an
    ``httpx.AsyncBaseTransport``. See ``EasClient`` for the arguments and errors; a store given as
    a URL is opened on first use (``async with`` or the first ``infer``), in a worker thread.
    """

    _kind = "AsyncEasClient"

    def __init__(
        self,
        *,
        store: ConfigStore | str | None = None,
        service: str | None = None,
        urls: Sequence[str] | None = None,
        model: str | None = None,
        version: str | None = None,
        token: str | None = None,
        timeout: float = 5.0,
        binary: bool = True,
        max_attempts: int = 3,
        retry_budget: RetryBudget | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections_per_instance: int = 64,
        metrics: ClientMetrics | None = None,
        labels: Mapping[str, str] | None = None,
        eject_after: int = 3,
        eject_for: float = 5.0,
        attempt_timeout: float | None = None,
    ):
        super().__init__(
            store=store,
            service=service,
            urls=urls,
            model=model,
            version=version,
            token=token,
            timeout=timeout,
            binary=binary,
            max_attempts=max_attempts,
            retry_budget=retry_budget,
            max_connections_per_instance=max_connections_per_instance,
            metrics=metrics,
            labels=labels,
            eject_after=eject_after,
            eject_for=eject_for,
            attempt_timeout=attempt_timeout,
        )
        self._transport: AsyncTransport = (
            AsyncInstances(self._max_connections)
            if transport is None
            else AsyncHttpxTransport.over(transport)
        )
        self._started = store is None
        self._start_lock = anyio.Lock()
        self._injected = transport
        self._http: httpx.AsyncClient | None = None
        """The client of ``generate_stream`` (made on the first stream; see ``EasClient``)."""

    async def _start(self) -> None:
        async with self._start_lock:
            if self._closed:
                raise RuntimeError(f"this {self._kind} is closed")
            if not self._started:
                await anyio.to_thread.run_sync(self._start_discovery)
                self._started = True

    async def infer(
        self,
        inputs: Mapping[str, np.ndarray[Any, Any]],
        outputs: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray[Any, Any]]:
        """Run the model on ``inputs``; see :meth:`eas_client.EasClient.infer`."""
        return await self._drive(self._call(inputs, outputs, timeout))

    async def generate(
        self,
        audio: object,
        *,
        max_new_tokens: int | None = None,
        num_beams: int = 1,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> GenerateResult:
        """Transcribe ``audio``: the whole answer; see :meth:`eas_client.EasClient.generate`."""
        request, limit = self._generate_request(
            audio, max_new_tokens, num_beams, request_id, timeout_s
        )
        return await self._drive(self._generate_call(request, limit))

    def generate_stream(
        self,
        audio: object,
        *,
        max_new_tokens: int | None = None,
        num_beams: int = 1,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> AsyncGenerator[GenerateChunk, None]:
        """Transcribe ``audio``, the tokens as they come: ``async for chunk in
        client.generate_stream(audio)``; see :meth:`eas_client.EasClient.generate_stream`.

        The arguments are checked here, before anything is sent. ``aclose()`` (or leaving
        ``contextlib.aclosing(...)``) closes the connection at once, and the server stops the
        generation; a generator dropped after a ``break`` is closed by the event loop soon
        after.
        """
        request, limit = self._generate_request(
            audio, max_new_tokens, num_beams, request_id, timeout_s
        )
        return self._stream(request, limit)

    async def _stream(
        self, request: GenerateRequest, limit: float
    ) -> AsyncGenerator[GenerateChunk, None]:
        if not self._started:
            await self._start()
        call = _StreamCall(self, request, limit)
        try:
            attempt = call.first()
            http = self._streams()
            while True:
                try:
                    async with _opened(http, attempt) as response:
                        if response.status_code != 200:
                            attempt = call.refused(await _whole(response, attempt.url))
                            continue
                        try:
                            async for piece in response.aiter_raw():
                                for chunk in call.events(piece):
                                    yield chunk
                        except httpx.HTTPError as exc:  # reading the body
                            raise _error(exc, attempt.url) from exc
                        if call.done:
                            return
                        attempt = call.ended()
                except EasClientError as exc:  # the transport's (or the call's own, raised again)
                    if call.done:
                        return  # the answer was whole: reading on to the end failed
                    attempt = call.failed(exc)
        finally:
            call.close()

    def _streams(self) -> httpx.AsyncClient:
        if self._http is None:  # one event loop: no lock needed
            limits = httpx.Limits(
                max_connections=None, max_keepalive_connections=self._max_connections
            )
            self._http = httpx.AsyncClient(transport=self._injected, limits=limits, trust_env=False)
        return self._http

    async def _drive(self, call: Generator[Request, Reply, T]) -> T:
        """Run a call loop of ``_base`` over the transport."""
        if not self._started:
            await self._start()
        transport = self._transport
        if self._retired:
            for origin in self._reapable():
                await transport.discard(origin)
        try:
            request = next(call)
            while True:
                try:
                    reply = await transport.send(request)
                except EasClientError as exc:  # the transport's, for the call loop to judge
                    request = call.throw(exc)
                else:
                    request = call.send(reply)
        except StopIteration as done:
            return cast(T, done.value)
        finally:
            call.close()

    async def aclose(self) -> None:
        """Stop discovery, close the store if the client opened it, close connections.

        Idempotent; calls after it raise ``RuntimeError``.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self._store is not None:
                await anyio.to_thread.run_sync(self._stop_discovery)
        finally:
            try:
                await self._transport.aclose()
            finally:
                http, self._http = self._http, None
                if http is not None:
                    await http.aclose()

    async def __aenter__(self) -> AsyncEasClient:
        await self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
