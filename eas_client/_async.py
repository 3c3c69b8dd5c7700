"""``AsyncEasClient``: the asyncio (anyio) client. I/O only; every decision is made in ``_base``.

The store is blocking (kazoo, sqlite): opening it, watching and the first read run in a worker
thread, on first use (``async with`` or the first ``infer``). Discovery callbacks arrive on store
threads and only swap the balancer's instance set under its lock, which never blocks the loop.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.to_thread
import httpx
import numpy as np

from ._balancer import RetryBudget
from ._base import ORIGIN_EXTENSION, Answer, Outputs, Pools, _Attempt, _BaseEasClient
from ._metrics import ClientMetrics
from ._wire import AsyncPool, WirePools, request_head

if TYPE_CHECKING:
    from config_store import ConfigStore

__all__ = ["AsyncEasClient"]


class _InstancePools(httpx.AsyncBaseTransport):
    """An httpx connection pool per instance, each bounded by ``limits``."""

    def __init__(self, limits: httpx.Limits):
        self._limits = limits
        self._ssl: ssl.SSLContext | None = None
        self._pools: Pools[httpx.AsyncHTTPTransport] = Pools(self._new)

    def _new(self) -> httpx.AsyncHTTPTransport:
        if self._ssl is None:  # built once: loading the CA bundle takes milliseconds
            self._ssl = httpx.create_ssl_context(trust_env=False)
        return httpx.AsyncHTTPTransport(verify=self._ssl, limits=self._limits, trust_env=False)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._pools.get(request).handle_async_request(request)

    async def discard(self, origin: str) -> None:
        pool = self._pools.pop(origin)
        if pool is not None:
            await pool.aclose()

    async def aclose(self) -> None:
        for pool in self._pools.pop_all():
            await pool.aclose()


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
        n = self._max_connections
        self._pools = (
            None
            if transport is not None
            else _InstancePools(httpx.Limits(max_connections=n, max_keepalive_connections=n))
        )
        self._http = httpx.AsyncClient(transport=transport or self._pools, trust_env=False)
        # The default transport (eas_client._wire) for plain-HTTP instances; httpx for an
        # injected transport and for https instances.
        self._wire: WirePools[AsyncPool] | None = (
            None
            if transport is not None
            else WirePools(lambda host, port: AsyncPool(host, port, n))
        )
        self._started = store is None
        self._start_lock = anyio.Lock()

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
        if not self._started:
            await self._start()
        if self._retired and self._pools is not None:
            for origin in self._reapable():
                await self._pools.discard(origin)
                if self._wire is not None:
                    self._wire.discard(origin)
        call = self._call(inputs, outputs, timeout)
        try:
            attempt = next(call)
            while True:
                attempt = call.send(await self._send(attempt))
        except StopIteration as done:
            return cast(Outputs, done.value)
        finally:
            call.close()

    async def _send(self, attempt: _Attempt) -> Answer:
        """Make one exchange; the answer or the exception, for the call loop to judge."""
        origin = attempt.extensions[ORIGIN_EXTENSION]
        if self._wire is not None and origin.startswith("http://"):
            pool = self._wire.get(origin)
            limits = attempt.extensions["timeout"]
            deadline = time.monotonic() + limits["read"]
            head = request_head("POST", attempt.url[len(origin) :], origin[7:], attempt.headers)
            try:
                return await pool.request(head, {}, attempt.body, deadline, limits["connect"])
            except OSError as exc:
                return exc
        try:
            return await self._http.post(
                attempt.url,
                content=attempt.body,
                headers=attempt.headers,
                extensions=attempt.extensions,
            )
        except httpx.HTTPError as exc:
            return exc

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
            await self._http.aclose()
            if self._wire is not None:
                self._wire.close()

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
