"""Faults on purpose: a ZooKeeper store's session expired for real, its connection dropped.

They act on the store's ``ZkBackend`` through its kazoo client, as kazoo's own test harness does
(a second client taking over the session id; kazoo's connection-drop hook). Test support may use
kazoo directly; the library imports it in ``config_store/_zk.py`` only. kazoo is imported when a
fault is injected, so that importing ``config_store.testing`` needs no ``[zk]`` extra.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._store import ConfigStore
    from .._zk import ZkBackend

__all__ = ["drop_connection", "expire_session", "session_id", "zk_backend"]


def zk_backend(store: ConfigStore) -> ZkBackend:
    """The ZooKeeper backend under ``store``.

    Raises:
        TypeError: the store runs on another backend.
    """
    from .._zk import ZkBackend

    backend = store.backend
    if not isinstance(backend, ZkBackend):
        raise TypeError(f"{store.url} is not a ZooKeeper store")
    return backend


def session_id(store: ConfigStore) -> int | None:
    """The store's ZooKeeper session id (None while it has none); None on other backends."""
    from .._zk import ZkBackend

    backend = store.backend
    return backend.session_id if isinstance(backend, ZkBackend) else None


def _on_state(backend: ZkBackend, wanted: str) -> threading.Event:
    """An event set the next time the backend's kazoo client reaches ``wanted``."""
    reached = threading.Event()

    def listener(state: str) -> bool:
        if state == wanted:
            reached.set()
            return True  # kazoo drops a listener that returns True
        return False

    backend.client.add_listener(listener)
    return reached


def expire_session(store: ConfigStore, timeout: float = 15.0) -> None:
    """Expire the store's session for real: a second client takes over the session id and
    closes it, so the server deletes the ephemerals, and the store goes SUSPENDED -> LOST ->
    CONNECTED with a new session. Returns once it is connected again.

    Raises:
        TypeError: not a ZooKeeper store.
        TimeoutError: the store did not notice the expiry, or did not reconnect, in time.
    """
    from kazoo.client import KazooClient
    from kazoo.protocol.states import KazooState

    backend = zk_backend(store)
    lost = _on_state(backend, KazooState.LOST)
    thief = KazooClient(
        hosts=backend.connect_string,
        client_id=backend.client.client_id,
        timeout=backend.session_timeout,
    )
    thief.start(timeout=timeout)
    thief.stop()
    thief.close()
    if not lost.wait(timeout):
        raise TimeoutError("the store did not notice its session expiry")
    if not store.wait_connected(timeout):
        raise TimeoutError("the store did not reconnect after its session expired")


def drop_connection(store: ConfigStore, timeout: float = 15.0) -> None:
    """Drop the store's TCP connection; the session survives (SUSPENDED -> CONNECTED). Returns
    once it is connected again.

    Raises:
        TypeError: not a ZooKeeper store.
        TimeoutError: the connection did not drop, or did not come back, in time.
    """
    from kazoo.protocol.connection import _CONNECTION_DROP
    from kazoo.protocol.states import KazooState

    backend = zk_backend(store)
    suspended = _on_state(backend, KazooState.SUSPENDED)
    backend.client._call(_CONNECTION_DROP, None)
    if not suspended.wait(timeout):
        raise TimeoutError("the store's connection did not drop")
    if not store.wait_connected(timeout):
        raise TimeoutError("the store did not reconnect")
