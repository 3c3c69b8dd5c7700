"""The default transport: one connection pool per instance, made on the instance's first call.

``http`` instances get a keep-alive pool of ``eas_client._wire``, ``https`` ones an httpx client of
their own (``eas_client._httpx``, for TLS): the choice is made once per instance, never per call.
A pool per instance is what makes ``max_connections_per_instance`` hold (httpx's ``Limits`` bound a
pool as a whole, across origins), and lets the pool of an instance that left discovery be closed
without touching the others.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from ._httpx import HttpsPools
from ._transport import AsyncInstancePool, InstancePool, Reply, Request
from ._wire import AsyncPool, SyncPool

__all__ = ["AsyncInstances", "Instances"]

P = TypeVar("P")


def _address(origin: str) -> tuple[str, int]:
    """``http://host:port`` (``[v6]`` in brackets) -> host, port."""
    host, _, port = origin[len("http://") :].rpartition(":")
    return host.strip("[]"), int(port)


class _Pools(Generic[P]):
    """Pools by origin, made on first use; thread-safe (discovery reaps from any thread)."""

    def __init__(self, make: Callable[[str], P]):
        self._make = make
        self._pools: dict[str, P] = {}
        self._lock = threading.Lock()

    def get(self, origin: str) -> P:
        pool = self._pools.get(origin)
        if pool is None:
            with self._lock:
                pool = self._pools.get(origin)
                if pool is None:
                    pool = self._pools[origin] = self._make(origin)
        return pool

    def pop(self, origin: str) -> P | None:
        with self._lock:
            return self._pools.pop(origin, None)

    def pop_all(self) -> list[P]:
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
        return pools

    def origins(self) -> list[str]:
        with self._lock:
            return list(self._pools)


class Instances:
    """``EasClient``'s default ``Transport``: a pool per instance, at most ``limit`` connections
    each (a call that finds them all busy waits, within its deadline)."""

    def __init__(self, limit: int):
        self._limit = limit
        self._https = HttpsPools(limit)
        self._pools: _Pools[InstancePool] = _Pools(self._new)

    def _new(self, origin: str) -> InstancePool:
        if origin.startswith("https://"):
            return self._https.sync()
        host, port = _address(origin)
        return SyncPool(host, port, self._limit)

    def send(self, request: Request) -> Reply:
        """See ``Transport.send``."""
        return self._pools.get(request.origin).send(request)

    def origins(self) -> list[str]:
        """The instances (origins) that have a pool open."""
        return self._pools.origins()

    def discard(self, origin: str) -> None:
        pool = self._pools.pop(origin)
        if pool is not None:
            pool.close()

    def close(self) -> None:
        for pool in self._pools.pop_all():
            pool.close()


class AsyncInstances:
    """``AsyncEasClient``'s default ``AsyncTransport``; see :class:`Instances`. Bound to the event
    loop of its first call (like any asyncio object)."""

    def __init__(self, limit: int):
        self._limit = limit
        self._https = HttpsPools(limit)
        self._pools: _Pools[AsyncInstancePool] = _Pools(self._new)

    def _new(self, origin: str) -> AsyncInstancePool:
        if origin.startswith("https://"):
            return self._https.asynchronous()
        host, port = _address(origin)
        return AsyncPool(host, port, self._limit)

    async def send(self, request: Request) -> Reply:
        """See ``Transport.send``."""
        return await self._pools.get(request.origin).send(request)

    def origins(self) -> list[str]:
        """The instances (origins) that have a pool open."""
        return self._pools.origins()

    async def discard(self, origin: str) -> None:
        pool = self._pools.pop(origin)
        if pool is not None:
            await pool.aclose()

    async def aclose(self) -> None:
        for pool in self._pools.pop_all():
            await pool.aclose()
