"""Delivery of callbacks off the backend's threads.

Backends learn of changes on threads that must not block (kazoo's connection and watch threads, the
SQLite poller). They post the new value into a per-subscriber *mailbox* that keeps only the latest
value; a small shared pool of daemon threads drains mailboxes, one drain at a time per mailbox, so a
subscriber sees its values in order and a slow callback holds up only itself.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Mailbox", "shared_pool"]

log = logging.getLogger("config_store.dispatch")
T = TypeVar("T")
_EMPTY = object()


class _Pool:
    """Daemon worker threads started on demand, so that a hung user callback never blocks exit."""

    def __init__(self, max_workers: int):
        self._tasks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._max = max_workers
        self._workers = 0
        self._idle = 0
        self._pending = 0
        self._lock = threading.Lock()

    def submit(self, task: Callable[[], None]) -> None:
        # A new thread whenever queued tasks outnumber idle threads, so a task never waits behind
        # a blocked callback while the pool has room.
        with self._lock:
            self._pending += 1
            spawn = self._pending > self._idle and self._workers < self._max
            if spawn:
                self._workers += 1
        self._tasks.put(task)
        if spawn:
            threading.Thread(target=self._run, name="config-store-callback", daemon=True).start()

    def _run(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            task = self._tasks.get()
            with self._lock:
                self._idle -= 1
                self._pending -= 1
            try:
                task()
            except Exception:  # a task never raises (mailboxes catch); belt and braces
                log.exception("callback task failed")


_shared: _Pool | None = None
_shared_lock = threading.Lock()


def shared_pool() -> _Pool:
    """The process-wide callback pool (16 threads at most)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = _Pool(16)
        return _shared


class Mailbox(Generic[T]):
    """Latest-value mailbox: ``post`` never blocks; ``deliver`` runs on the pool, serially.

    ``accept(value)``, when given, runs at delivery time on the draining thread and may drop a value
    (used for the monotonic-revision rule).
    """

    def __init__(
        self,
        deliver: Callable[[T], None],
        accept: Callable[[T], bool] | None = None,
        pool: _Pool | None = None,
    ):
        self._deliver = deliver
        self._accept = accept
        self._pool = pool or shared_pool()
        self._lock = threading.Lock()
        self._pending: object = _EMPTY
        self._scheduled = False
        self._closed = False

    def post(self, value: T) -> None:
        with self._lock:
            if self._closed:
                return
            self._pending = value
            if self._scheduled:
                return
            self._scheduled = True
        self._pool.submit(self._drain)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._pending = _EMPTY

    @property
    def closed(self) -> bool:
        return self._closed

    def _drain(self) -> None:
        while True:
            with self._lock:
                value = self._pending
                self._pending = _EMPTY
                if value is _EMPTY or self._closed:
                    self._scheduled = False
                    return
            try:
                if self._accept is None or self._accept(value):  # type: ignore[arg-type]
                    self._deliver(value)  # type: ignore[arg-type]
            except Exception:
                log.exception("config_store callback raised; it keeps receiving updates")
