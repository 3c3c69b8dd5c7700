"""``AsyncEasClient``: the asyncio (anyio) client. I/O only; every decision is made in ``_base``.

The store is blocking (kazoo, sqlite): opening it, watching and the first read run in a worker
thread, on first use (``async with`` or the first ``infer``). Discovery callbacks arrive on store
threads and only swap the balancer's instance set under its lock, which never blocks the loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.to_thread
import numpy as np

from ._balancer import RetryBudget
from ._base import Outputs, _BaseEasClient
from ._errors import EasClientError
from ._httpx import AsyncHttpxTransport
from ._instances import AsyncInstances
from ._metrics import ClientMetrics
from ._transport import AsyncTransport

if TYPE_CHECKING:
    import httpx

    from config_store import ConfigStore

__all__ = ["AsyncEasClient"]


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
        transport = self._transport
        if self._retired:
            for origin in self._reapable():
                await transport.discard(origin)
        call = self._call(inputs, outputs, timeout)
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
            return cast(Outputs, done.value)
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
            await self._transport.aclose()

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
