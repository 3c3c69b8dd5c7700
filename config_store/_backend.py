"""The contract between :class:`~config_store.ConfigStore` and the backend it runs on.

A backend is storage and change detection, nothing more: read, compare-and-swap publish, remove,
history, keys, instance listing, keeping registrations alive, and telling its ``Sink`` when a
watched key or service changed. Validation, the failover override, the local snapshot, listeners
and their delivery rules belong to the store (``_store.py``, ``_watch.py``), the same on every
backend.

Threads. The store calls a backend from any thread, concurrently; every method is thread-safe and
the blocking ones wait at most the backend's own timeouts. A backend calls its sink from threads
of its own (ZooKeeper: kazoo's completion thread for keys, the backend's worker for services;
SQLite: the poller thread), never from inside a call the store made (``watch_key`` only asks for a
read). The sink returns at once: it takes a short lock, posts to mailboxes and never calls back
into the backend, so a backend may call it holding its own locks. For one key or service, a
backend reports values in the order it learned them.
"""

from __future__ import annotations

import json
from typing import Final, Literal, Protocol

from ._errors import ConfigStoreError, Conflict
from ._types import ConfigItem, Instance

__all__ = [
    "RESERVED_PAYLOAD_KEYS",
    "Backend",
    "Key",
    "Sink",
    "StoreState",
    "check_cas",
    "parse_instance",
]

StoreState = Literal["connected", "suspended", "connecting", "closed"]
Key = tuple[str, str]
"""``(group, data_id)``, both validated by the store before a backend sees them."""
RESERVED_PAYLOAD_KEYS: Final = frozenset({"serviceEndpoint", "additionalEndpoints", "status"})


class Sink(Protocol):
    """Where a backend reports what changed (the store's watch registry)."""

    def config_changed(self, key: Key, item: ConfigItem | None) -> None:
        """The authoritative value of a watched key (``None``: it does not exist)."""

    def instances_changed(self, service: str, instances: list[Instance]) -> None:
        """The live instances of a watched service, in any order."""


class Backend(Protocol):
    """A store backend: ``ZkBackend`` (``zk://``) or ``SqliteBackend`` (``sqlite://``).

    Keys, services, content and documents reach it validated; it converts its own errors into
    ``config_store``'s (``StoreUnavailable``, ``Conflict``, ``NotFound``, ``PermissionDenied``)
    once, where they are raised. After ``close`` the store calls only ``deregister`` (a
    registration handle closed late), which then does nothing.
    """

    @property
    def url(self) -> str:
        """The store URL without its password."""

    @property
    def identity(self) -> str:
        """Which store this is: the same for every client of it, safe in a file name."""

    @property
    def history_keep(self) -> int:
        """How many revisions per key ``publish`` keeps."""

    @property
    def state(self) -> StoreState:
        """``connected``, ``suspended`` (contact lost), ``connecting`` or ``closed``."""

    def start(self, sink: Sink) -> None:
        """Connect (ZooKeeper: wait at most ``connect_timeout``, then go on in the background)
        and report to ``sink`` from now on. Called once, by the store that owns the backend.

        Raises:
            StoreUnavailable: the store cannot be opened at all (an SQLite file).
        """

    def wait_connected(self, timeout: float | None) -> bool:
        """Block until connected; False on timeout."""

    def read(self, key: Key) -> ConfigItem | None:
        """The key's current value.

        Raises:
            StoreUnavailable: not reachable now (the store then answers from its copies).
        """

    def publish(self, key: Key, content: bytes, md5: str, expected: int | None) -> int:
        """Write a new revision and its history entry atomically, pruning history to
        ``history_keep``; ``expected`` as in ``check_cas``. Returns the new revision.

        Raises:
            Conflict, PermissionDenied, StoreUnavailable.
        """

    def remove(self, key: Key, expected: int | None) -> None:
        """Delete the key's current value; its history stays.

        Raises:
            NotFound, Conflict, PermissionDenied, StoreUnavailable.
        """

    def history(self, key: Key, limit: int) -> list[ConfigItem]:
        """At most ``limit`` revisions, newest first."""

    def keys(self, group: str) -> list[str]:
        """The data ids of a group, in any order."""

    def watch_key(self, key: Key) -> None:
        """Report the key's value to the sink soon, and again after every change; never blocks."""

    def unwatch_key(self, key: Key) -> None:
        """Stop reporting the key (a report already under way may still arrive)."""

    def instances(self, service: str) -> list[Instance]:
        """The live instances of a service, sorted by id.

        Raises:
            StoreUnavailable: not reachable now.
        """

    def watch_service(self, service: str) -> None:
        """Report the service's instances to the sink soon, and after every change."""

    def unwatch_service(self, service: str) -> None:
        """Stop reporting the service."""

    def register(self, instance: Instance, document: bytes) -> None:
        """Register ``instance`` with its serverset ``document`` and keep it registered (across
        session losses, lease expiries) until ``deregister`` or ``close``. A registration that
        cannot be written now is retried in the background.

        Raises:
            PermissionDenied, Conflict: refused for good; nothing is kept.
            StoreUnavailable: (SQLite) the database cannot be written.
        """

    def deregister(self, instance: Instance) -> None:
        """Remove the registration of ``instance.service``/``instance.id``; never raises."""

    def close(self) -> None:
        """Remove this client's registrations, stop every thread, disconnect. Idempotent."""


def parse_instance(service: str, node_id: str, data: bytes) -> Instance:
    """Decode a serverset document into an ``Instance``.

    Raises:
        ConfigStoreError: the document is not a serverset JSON object.
    """
    try:
        doc = json.loads(data)
        endpoint = doc["serviceEndpoint"]
        host, port = str(endpoint["host"]), int(endpoint["port"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigStoreError(
            f"instance {service}/{node_id} has no valid serverset document"
        ) from exc
    payload = {k: v for k, v in doc.items() if k not in RESERVED_PAYLOAD_KEYS}
    return Instance(service, node_id, host, port, str(doc.get("status", "ALIVE")), payload)


def check_cas(key: Key, expected: int | None, current: int | None) -> None:
    """Compare-and-swap rule shared by the backends (0 means "must not exist").

    Raises:
        Conflict: ``current`` is not what ``expected`` asks for.
    """
    if expected is None:
        return
    if expected == 0 and current is not None:
        raise Conflict(
            f"{key[0]}/{key[1]} already exists at revision {current}; expected it not to exist",
            expected=0,
            actual=current,
        )
    if expected != 0 and current != expected:
        found = "does not exist" if current is None else f"is at revision {current}"
        raise Conflict(
            f"{key[0]}/{key[1]} {found}; expected revision {expected}",
            expected=expected,
            actual=current,
        )
