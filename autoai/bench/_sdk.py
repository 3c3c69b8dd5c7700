"""The default target: calls through the SDK (``AsyncModelClient``), routed as published.

Routing, the input check, retries on another instance and the client-side metrics are the
application's own. The instances whose ``/metrics`` tell the server side are those of the
services the route table can send the benchmark's calls to: the pinned version's, or every route
with a weight > 0 and the shadow's, plus blade fallbacks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from autoai.sdk import AsyncModelClient, ModelClientError, RouteTable, Signature
from config_store import ConfigStore, ConfigStoreError, open_store
from eas_client import (
    EasClientError,
    InvalidRequest,
    ModelNotFound as NotServed,
    NoInstanceAvailable,
    TransportError,
)

from ._errors import BadInput, BenchError, Unreachable

__all__ = ["SdkTarget"]


def _services(table: RouteTable, version: str | None) -> list[str]:
    """The services the benchmark's calls can reach under ``table``."""
    if version is not None:
        routes = [table.route(version)]
    else:
        routes = [r for r in table.routes if r.weight > 0]
        if table.shadow is not None and table.shadow.ratio > 0:
            routes.append(table.shadow.route)
    seen = {r.version for r in routes}
    for route in list(routes):  # a blade route may fall back to another version
        fallback = route.blade.fallback_version if route.blade is not None else None
        if fallback is not None and fallback not in seen:
            seen.add(fallback)
            routes.append(table.route(fallback))
    return sorted({r.service for r in routes})


class SdkTarget:
    """Calls of ``model`` through an ``AsyncModelClient`` on the store at ``address``.

    Build with :meth:`open`.
    """

    kind = "sdk"

    def __init__(
        self,
        address: str,
        store: ConfigStore,
        client: AsyncModelClient,
        table: RouteTable,
        model: str,
        version: str | None,
    ):
        self.address = address
        self._store = store
        self._client = client
        self._model = model
        self._version = version
        self._services = _services(table, version)
        self.signature: Signature = table.signature
        self._inputs: Mapping[str, np.ndarray[Any, Any]] = {}

    @classmethod
    async def open(
        cls,
        store_url: str,
        model: str,
        version: str | None,
        *,
        binary: bool = True,
        timeout: float = 5.0,
        max_in_flight: int = 64,
    ) -> SdkTarget:
        """Open the store, subscribe to the model's route table.

        Raises:
            Unreachable: the store cannot be opened.
            BadInput: the model is not published (or has no such version), or its route table
                cannot be used.
        """
        try:
            store = await asyncio.to_thread(open_store, store_url)
        except ConfigStoreError as exc:
            raise Unreachable(
                f"cannot open the config store {store_url}: {exc}", store_url
            ) from exc
        client = AsyncModelClient(
            store,
            registry=CollectorRegistry(),
            timeout=timeout,
            binary=binary,
            max_connections_per_instance=max(64, max_in_flight),
            # open_store already waited its connect timeout; while the store is unreachable only
            # the local snapshot can answer, and it posts its value at once (on another thread)
            subscribe_timeout=10.0 if store.state == "connected" else 1.0,
        )
        try:
            table = await asyncio.to_thread(client.routes, model)
            if version is not None:
                table.route(version)
        except (ModelClientError, ConfigStoreError) as exc:
            await client.aclose()
            await asyncio.to_thread(store.close)
            raise BadInput(str(exc)) from exc
        return cls(store_url, store, client, table, model, version)

    async def probe(
        self, inputs: Mapping[str, np.ndarray[Any, Any]]
    ) -> dict[str, np.ndarray[Any, Any]]:
        """One routed call with ``inputs`` (kept for the run): its outputs.

        Raises:
            BadInput: the SDK or the instance refuses the inputs.
            Unreachable: no live instance answers.
        """
        self._inputs = inputs
        try:
            return await self._client.predict(self._model, inputs, version=self._version)
        except (ModelClientError, InvalidRequest, NotServed) as exc:
            raise BadInput(f"model {self._model!r} refuses the request: {exc}") from exc
        except (NoInstanceAvailable, TransportError) as exc:
            raise Unreachable(f"model {self._model!r}: {exc}", self.address) from exc
        except EasClientError as exc:
            raise BenchError(f"model {self._model!r}: the first call failed: {exc}") from exc

    def use(self, inputs: Mapping[str, np.ndarray[Any, Any]]) -> None:
        """Send ``inputs`` with every call, without a probing call (another process probed
        the same model with inputs of the same signature)."""
        self._inputs = inputs

    async def send(self) -> None:
        """One routed call (errors: the SDK's and ``eas_client``'s, counted by the loops)."""
        await self._client.predict(self._model, self._inputs, version=self._version)

    async def instances(self) -> list[str]:
        """Base URLs of the live instances of the services the calls reach, from the store."""
        urls: set[str] = set()
        for service in self._services:
            try:
                found = await asyncio.to_thread(self._store.instances, service)
            except ConfigStoreError:
                continue
            for instance in found:
                host = f"[{instance.host}]" if ":" in instance.host else instance.host
                urls.add(f"http://{host}:{instance.port}")
        return sorted(urls)

    async def aclose(self) -> None:
        await self._client.aclose()
        await asyncio.to_thread(self._store.close)
