"""``ConfigStore``: the one store class, the same on every backend.

The store validates every argument, answers reads in Diamond's order (failover file, backend,
then what this process last saw, then the snapshot), builds registration documents and owns the
lifecycle. Listeners, instance watches and the failover poller live in ``Watches`` (``_watch.py``);
storage, change detection and keeping registrations alive in the ``Backend`` (``_backend.py``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import _envelope
from ._backend import RESERVED_PAYLOAD_KEYS, Backend, Key, StoreState
from ._errors import InvalidKey, StoreClosed, StoreUnavailable
from ._keys import instance_id, validate_host, validate_key, validate_port
from ._snapshot import FailoverDir, SnapshotDir
from ._types import ConfigCallback, ConfigItem, Instance, InstanceCallback
from ._watch import ConfigListener, InstanceWatch, Watches

__all__ = ["ConfigStore", "InstanceRegistration", "StoreState"]


class InstanceRegistration:
    """Handle returned by ``register``: the backend keeps the instance registered (re-created
    after a session loss, lease renewed) until ``close``."""

    def __init__(self, backend: Backend, instance: Instance, document: bytes):
        self._backend = backend
        self._instance = instance
        self.document = document
        """The serverset JSON document as registered."""
        self.closed = False

    @property
    def instance(self) -> Instance:
        """What is registered."""
        return self._instance

    def close(self) -> None:
        """Remove the registration; idempotent."""
        if not self.closed:
            self.closed = True
            self._backend.deregister(self._instance)

    def __enter__(self) -> InstanceRegistration:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ConfigStore:
    """A Diamond-like configuration store. Obtain one with :func:`config_store.open_store`.

    Thread-safe. Callbacks run on the store's callback threads, never on the caller's or the
    backend's I/O threads.

    Args:
        backend: the storage (``ZkBackend`` or ``SqliteBackend``); the store starts it and owns it.
        snapshot_dir: where the local snapshot lives (``None``: no snapshot).
        failover_dir: the operator's override directory (``None``: none).
        failover_poll_interval: how often, in seconds, failover files are looked for.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        snapshot_dir: Path | None = None,
        failover_dir: Path | None = None,
        failover_poll_interval: float = 1.0,
    ):
        self._backend = backend
        self._snapshot = SnapshotDir(snapshot_dir, backend.identity) if snapshot_dir else None
        self._failover = FailoverDir(failover_dir) if failover_dir else None
        self._watches = Watches(backend, self._snapshot, self._failover, failover_poll_interval)
        self._lock = threading.Lock()
        self._last_instances: dict[str, list[Instance]] = {}
        self._closed = threading.Event()
        backend.start(self._watches)

    # ------------------------------------------------------------------------------ about

    @property
    def url(self) -> str:
        """The store URL without its password."""
        return self._backend.url

    @property
    def identity(self) -> str:
        """Which store this is, the same for every client of it and different for any other
        store (``sqlite_<hash of the file's real path>``, ``zk_<hosts>_<chroot>``); safe in a
        file name."""
        return self._backend.identity

    @property
    def history_keep(self) -> int:
        """How many revisions per key the history keeps."""
        return self._backend.history_keep

    @property
    def backend(self) -> Backend:
        """The backend this store runs on (for diagnostics and ``config_store.testing``)."""
        return self._backend

    @property
    def session_id(self) -> int | None:
        """The ZooKeeper session id; None on other backends.

        Kept for callers written when the store was the ZooKeeper backend itself;
        ``config_store.testing.session_id(store)`` says the same.
        """
        session: int | None = getattr(self._backend, "session_id", None)
        return session

    @property
    def state(self) -> StoreState:
        """``connected``, ``suspended`` (contact lost), ``connecting`` or ``closed``."""
        return "closed" if self.closed else self._backend.state

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._closed.is_set()

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Block until the backend is connected; returns False on timeout."""
        return self._backend.wait_connected(timeout)

    # ----------------------------------------------------------------------------- config

    def publish(
        self,
        data_id: str,
        content: bytes | str,
        group: str = "models",
        expected_revision: int | None = None,
    ) -> int:
        """Publish a new revision of ``group/data_id``.

        Args:
            data_id: the key.
            content: bytes, or str (stored as UTF-8); at most 512 KiB.
            group: the key's group.
            expected_revision: compare-and-swap: the revision the key must have now (0: must not
                exist); ``None`` publishes unconditionally.

        Returns:
            The new revision, one more than the highest the key ever had.

        Raises:
            InvalidKey, ContentTooLarge: bad input; nothing is written.
            Conflict: the key's revision is not ``expected_revision``.
            PermissionDenied: read-only credential.
            StoreUnavailable: the backend could not be reached within the write timeout.
        """
        key = _key(group, data_id)
        data = _envelope.check_content(content)
        if expected_revision is not None:
            _check_expected(expected_revision)
        self._check_open()
        return self._backend.publish(key, data, _envelope.content_md5(data), expected_revision)

    def get(self, data_id: str, group: str = "models") -> ConfigItem | None:
        """The current revision of a key, or ``None`` when it does not exist.

        Order: failover file, then the store; when the store is unreachable, the last value this
        process saw, then the snapshot file (``item.stale`` is then True).

        Raises:
            InvalidKey: bad key.
            StoreUnavailable: the store is unreachable and no local copy exists.
        """
        key = _key(group, data_id)
        self._check_open()
        if self._failover is not None and (item := self._failover.read(*key)) is not None:
            return item
        try:
            item = self._backend.read(key)
        except StoreUnavailable:
            cached = self._watches.cached(key)
            if cached is None and self._snapshot is not None:
                cached = self._snapshot.read(*key)
            if cached is None:
                raise
            return cached
        self._watches.snapshot_item(key, item)
        return item

    def history(self, data_id: str, group: str = "models", limit: int = 20) -> list[ConfigItem]:
        """Revisions of a key, newest first, including the current one (at most ``history_keep``).

        Raises:
            InvalidKey: bad key or limit.
            StoreUnavailable: the store is unreachable.
        """
        key = _key(group, data_id)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidKey(f"limit must be a positive integer, got {limit!r}")
        self._check_open()
        return self._backend.history(key, limit)

    def remove(
        self, data_id: str, group: str = "models", expected_revision: int | None = None
    ) -> None:
        """Delete a key; its history stays, and a later publish continues its revisions.

        Raises:
            NotFound: the key does not exist.
            Conflict: the key's revision is not ``expected_revision``.
            PermissionDenied, StoreUnavailable: as for ``publish``.
        """
        key = _key(group, data_id)
        if expected_revision is not None:
            _check_expected(expected_revision)
        self._check_open()
        self._backend.remove(key, expected_revision)

    def keys(self, group: str = "models") -> list[str]:
        """The data ids of a group, sorted.

        Raises:
            StoreUnavailable: the store is unreachable.
        """
        group = validate_key(group, "group")
        self._check_open()
        return sorted(self._backend.keys(group))

    def add_listener(
        self, data_id: str, callback: ConfigCallback, group: str = "models"
    ) -> ConfigListener:
        """Call ``callback(item | None)`` with the key's current value and after every change.

        The first call carries the current value (from the snapshot while the store is
        unreachable). Revisions delivered to one listener strictly increase; intermediate revisions
        may be skipped; the last one is always delivered. A failover file, while present, is
        delivered instead of the store's value. The callback runs on a store thread; exceptions it
        raises are logged.

        Returns:
            A handle whose ``cancel()`` stops delivery.
        """
        key = _key(group, data_id)
        if not callable(callback):
            raise TypeError("callback must be callable")
        self._check_open()
        return self._watches.add_listener(key, callback)

    # -------------------------------------------------------------------------- instances

    def register(
        self, service: str, host: str, port: int, payload: Mapping[str, Any] | None = None
    ) -> InstanceRegistration:
        """Register a live instance of ``service`` at ``host:port``.

        The registration lives as long as this store (ZooKeeper: an ephemeral node, re-created
        after a session loss; SQLite: a lease renewed by heartbeats). Its document is serverset
        JSON (``serviceEndpoint``, ``status: ALIVE``) plus the payload's fields.

        Raises:
            InvalidKey: bad service, host or port, or a payload that is not a JSON object or uses
                a reserved key (serviceEndpoint, additionalEndpoints, status).
            StoreUnavailable, PermissionDenied: the first registration failed.
        """
        service = validate_key(service, "service")
        host = validate_host(host)
        port = validate_port(port)
        fields = dict(payload or {})
        clash = RESERVED_PAYLOAD_KEYS & fields.keys()
        if clash:
            raise InvalidKey(
                f"payload keys {sorted(clash)} are reserved for the serverset document"
            )
        doc = {
            "serviceEndpoint": {"host": host, "port": port},
            "additionalEndpoints": {},
            "status": "ALIVE",
            **fields,
        }
        try:
            document = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
        except (TypeError, ValueError) as exc:
            raise InvalidKey(f"payload is not JSON-serialisable: {exc}") from exc
        _envelope.check_content(document)
        self._check_open()
        instance = Instance(service, instance_id(host, port), host, port, "ALIVE", fields)
        self._backend.register(instance, document)
        return InstanceRegistration(self._backend, instance, document)

    def instances(self, service: str) -> list[Instance]:
        """Live instances of a service, sorted by id.

        While the store is unreachable, the last list this client knows is answered instead:
        the watched copy, else the last answer of this method, else the snapshot.

        Raises:
            StoreUnavailable: the store is unreachable and this client holds no copy.
        """
        service = validate_key(service, "service")
        self._check_open()
        try:
            found = self._backend.instances(service)
        except StoreUnavailable:
            known = self._watches.instances(service)
            if known is None:
                with self._lock:
                    known = self._last_instances.get(service)
            if known is None and self._snapshot is not None:
                known = self._snapshot.read_instances(service)
            if known is None:
                raise
            return list(known)
        with self._lock:
            self._last_instances[service] = list(found)
        if self._snapshot is not None:
            self._snapshot.write_instances(service, found)
        return found

    def watch_instances(self, service: str, callback: InstanceCallback) -> InstanceWatch:
        """Call ``callback(instances)`` with the current list and after every change.

        Returns:
            A handle whose ``cancel()`` stops delivery.
        """
        service = validate_key(service, "service")
        if not callable(callback):
            raise TypeError("callback must be callable")
        self._check_open()
        return self._watches.watch_instances(service, callback)

    # -------------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Cancel listeners, remove registrations, disconnect. Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._watches.close()
        self._backend.close()

    def __enter__(self) -> ConfigStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} {self.state}>"

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise StoreClosed(f"store {self.url} is closed")


def _key(group: object, data_id: object) -> Key:
    return validate_key(group, "group"), validate_key(data_id, "data id")


def _check_expected(expected: object) -> None:
    if isinstance(expected, bool) or not isinstance(expected, int) or expected < 0:
        raise InvalidKey(
            f"expected_revision must be a non-negative integer or None, got {expected!r}"
        )
