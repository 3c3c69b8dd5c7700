"""What both backends share: validation, the failover override, the local snapshot, listener
bookkeeping and the delivery rules. Backends implement the ``_backend_*`` hooks and report changes
through ``_apply_config`` / ``_apply_instances``, always from one thread, in the order the backend
learned them."""

from __future__ import annotations

import abc
import functools
import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from . import _envelope
from ._dispatch import Mailbox
from ._errors import ConfigStoreError, Conflict, InvalidKey, StoreClosed, StoreUnavailable
from ._keys import instance_id, validate_host, validate_key, validate_port
from ._snapshot import FailoverDir, SnapshotDir
from ._types import ConfigCallback, ConfigItem, Instance, InstanceCallback
from ._url import StoreUrl

__all__ = ["RESERVED_PAYLOAD_KEYS", "BaseRegistration", "ConfigStore", "StoreState"]

log = logging.getLogger("config_store")

StoreState = Literal["connected", "suspended", "connecting", "closed"]
RESERVED_PAYLOAD_KEYS: Final = frozenset({"serviceEndpoint", "additionalEndpoints", "status"})
Key = tuple[str, str]
_UNSET: Final = object()


class _ConfigListener:
    """Handle returned by ``add_listener``; applies the per-listener monotonic rule."""

    def __init__(self, store: ConfigStore, key: Key, callback: ConfigCallback):
        self._store = store
        self.key = key
        self._callback = callback
        self._last_revision = 0
        self._last: object = _UNSET  # _UNSET, None, or the last ConfigItem delivered
        self.mailbox: Mailbox[ConfigItem | None] = Mailbox(self._callback, self._accept)

    def _accept(self, item: ConfigItem | None) -> bool:
        last = self._last
        if item is None:
            ok = last is not None
        elif item.source == "failover":
            ok = not (
                isinstance(last, ConfigItem) and last.source == "failover" and last.md5 == item.md5
            )
        elif isinstance(last, ConfigItem) and last.source == "failover":
            ok = item.revision >= self._last_revision  # the override was lifted
        else:
            ok = item.revision > self._last_revision
        if ok:
            self._last = item
            if item is not None and item.source != "failover":
                self._last_revision = item.revision
        return ok

    def cancel(self) -> None:
        self.mailbox.close()
        self._store._drop_listener(self)


class _InstanceWatch:
    def __init__(self, store: ConfigStore, service: str, callback: InstanceCallback):
        self._store = store
        self.service = service
        self.mailbox: Mailbox[list[Instance]] = Mailbox(callback)

    def cancel(self) -> None:
        self.mailbox.close()
        self._store._drop_instance_watch(self)


@dataclass
class _KeyState:
    listeners: list[_ConfigListener] = field(default_factory=list)
    store_item: object = _UNSET  # _UNSET until known, then ConfigItem | None
    failover_item: ConfigItem | None = None

    def effective(self) -> object:
        return self.failover_item if self.failover_item is not None else self.store_item


@dataclass
class _ServiceState:
    watches: list[_InstanceWatch] = field(default_factory=list)
    instances: list[Instance] | None = None


class BaseRegistration(abc.ABC):
    """Registration handle; backends keep it alive (re-create, heartbeat) until ``close``."""

    def __init__(self, instance: Instance, document: bytes):
        self._instance = instance
        self.document = document
        self.closed = False

    @property
    def instance(self) -> Instance:
        return self._instance

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._release()

    @abc.abstractmethod
    def _release(self) -> None: ...

    def __enter__(self) -> BaseRegistration:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ConfigStore(abc.ABC):
    """A Diamond-like configuration store. Obtain one with :func:`config_store.open_store`.

    Thread-safe. Callbacks run on the store's callback threads, never on the caller's or the
    backend's I/O threads.
    """

    def __init__(
        self,
        url: StoreUrl,
        *,
        identity: str,
        snapshot_dir: Path | None,
        failover_dir: Path | None,
        history_keep: int = 100,
        failover_poll_interval: float = 1.0,
    ):
        self._url = url
        self._identity = identity
        self._snapshot = SnapshotDir(snapshot_dir, identity) if snapshot_dir else None
        self._failover = FailoverDir(failover_dir) if failover_dir else None
        self._history_keep = history_keep
        self._lock = threading.RLock()
        self._keys: dict[Key, _KeyState] = {}
        self._services: dict[str, _ServiceState] = {}
        self._last_instances: dict[str, list[Instance]] = {}
        self._snapshotted: dict[Key, int] = {}
        self._snapshot_box: dict[Key, Mailbox[ConfigItem | None]] = {}
        self._closed = threading.Event()
        self._failover_poll_interval = failover_poll_interval
        self._failover_thread: threading.Thread | None = None

    # ----------------------------------------------------------------------------------- public

    @property
    def url(self) -> str:
        """The store URL without its password."""
        return self._url.redacted()

    @property
    def identity(self) -> str:
        """Which store this is, the same for every client of it and different for any other
        store (``sqlite_<hash of the file's real path>``, ``zk_<hosts>_<chroot>``); safe in a
        file name."""
        return self._identity

    @property
    def history_keep(self) -> int:
        """How many revisions per key the history keeps."""
        return self._history_keep

    @property
    @abc.abstractmethod
    def state(self) -> StoreState:
        """``connected``, ``suspended`` (contact lost), ``connecting`` or ``closed``."""

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Block until the backend is connected; returns False on timeout."""
        return self._backend_wait_connected(timeout)

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
        key = self._key(group, data_id)
        data = _envelope.check_content(content)
        if expected_revision is not None:
            self._check_expected(expected_revision)
        self._check_open()
        return self._backend_publish(key, data, _envelope.content_md5(data), expected_revision)

    def get(self, data_id: str, group: str = "models") -> ConfigItem | None:
        """The current revision of a key, or ``None`` when it does not exist.

        Order: failover file, then the store; when the store is unreachable, the last value this
        process saw, then the snapshot file (``item.stale`` is then True).

        Raises:
            InvalidKey: bad key.
            StoreUnavailable: the store is unreachable and no local copy exists.
        """
        key = self._key(group, data_id)
        self._check_open()
        if self._failover is not None and (item := self._failover.read(*key)) is not None:
            return item
        try:
            item = self._backend_read(key)
        except StoreUnavailable:
            cached = self._cached(key)
            if cached is not _UNSET:
                return cached  # type: ignore[return-value]
            raise
        self._snapshot_write(key, item)
        return item

    def history(self, data_id: str, group: str = "models", limit: int = 20) -> list[ConfigItem]:
        """Revisions of a key, newest first, including the current one (at most ``history_keep``).

        Raises:
            InvalidKey: bad key or limit.
            StoreUnavailable: the store is unreachable.
        """
        key = self._key(group, data_id)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidKey(f"limit must be a positive integer, got {limit!r}")
        self._check_open()
        return self._backend_history(key, limit)

    def remove(
        self, data_id: str, group: str = "models", expected_revision: int | None = None
    ) -> None:
        """Delete a key; its history stays, and a later publish continues its revisions.

        Raises:
            NotFound: the key does not exist.
            Conflict: the key's revision is not ``expected_revision``.
            PermissionDenied, StoreUnavailable: as for ``publish``.
        """
        key = self._key(group, data_id)
        if expected_revision is not None:
            self._check_expected(expected_revision)
        self._check_open()
        self._backend_remove(key, expected_revision)

    def keys(self, group: str = "models") -> list[str]:
        """The data ids of a group, sorted.

        Raises:
            StoreUnavailable: the store is unreachable.
        """
        group = validate_key(group, "group")
        self._check_open()
        return sorted(self._backend_keys(group))

    def add_listener(
        self, data_id: str, callback: ConfigCallback, group: str = "models"
    ) -> _ConfigListener:
        """Call ``callback(item | None)`` with the key's current value and after every change.

        The first call carries the current value (from the snapshot while the store is
        unreachable). Revisions delivered to one listener strictly increase; intermediate revisions
        may be skipped; the last one is always delivered. A failover file, while present, is
        delivered instead of the store's value. The callback runs on a store thread; exceptions it
        raises are logged.

        Returns:
            A handle whose ``cancel()`` stops delivery.
        """
        key = self._key(group, data_id)
        if not callable(callback):
            raise TypeError("callback must be callable")
        self._check_open()
        listener = _ConfigListener(self, key, callback)
        with self._lock:
            state = self._keys.get(key)
            fresh = state is None
            if state is None:
                state = self._keys[key] = _KeyState()
                if self._failover is not None:
                    state.failover_item = self._failover.read(*key)
            state.listeners.append(listener)
            current = state.effective()
            if (
                fresh
                and current is _UNSET
                and self.state != "connected"
                and self._snapshot is not None
            ):
                snap = self._snapshot.read(*key)
                if snap is not None:
                    state.store_item = current = snap
        if current is not _UNSET:
            listener.mailbox.post(current)  # type: ignore[arg-type]
        if fresh:
            self._backend_watch_key(key)
            self._ensure_failover_poller()
        return listener

    def register(
        self, service: str, host: str, port: int, payload: Mapping[str, Any] | None = None
    ) -> BaseRegistration:
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
        return self._backend_register(instance, document)

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
            found = self._backend_instances(service)
        except StoreUnavailable:
            with self._lock:
                st = self._services.get(service)
                if st is not None and st.instances is not None:
                    return list(st.instances)
                known = self._last_instances.get(service)
            if known is not None:
                return list(known)
            snap = self._snapshot.read_instances(service) if self._snapshot else None
            if snap is None:
                raise
            return snap
        with self._lock:
            self._last_instances[service] = list(found)
        if self._snapshot is not None:
            self._snapshot.write_instances(service, found)
        return found

    def watch_instances(self, service: str, callback: InstanceCallback) -> _InstanceWatch:
        """Call ``callback(instances)`` with the current list and after every change.

        Returns:
            A handle whose ``cancel()`` stops delivery.
        """
        service = validate_key(service, "service")
        if not callable(callback):
            raise TypeError("callback must be callable")
        self._check_open()
        watch = _InstanceWatch(self, service, callback)
        with self._lock:
            st = self._services.get(service)
            fresh = st is None
            if st is None:
                st = self._services[service] = _ServiceState()
                if self.state != "connected" and self._snapshot is not None:
                    st.instances = self._snapshot.read_instances(service)
            st.watches.append(watch)
            current = st.instances
        if current is not None:
            watch.mailbox.post(list(current))
        if fresh:
            self._backend_watch_service(service)
        return watch

    def close(self) -> None:
        """Cancel listeners, remove registrations, disconnect. Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        with self._lock:
            for st in self._keys.values():
                for lst in st.listeners:
                    lst.mailbox.close()
            for sst in self._services.values():
                for w in sst.watches:
                    w.mailbox.close()
            self._keys.clear()
            self._services.clear()
        self._backend_close()

    def __enter__(self) -> ConfigStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} {self.state}>"

    # ------------------------------------------------------------------------- for backends

    def _apply_config(self, key: Key, item: ConfigItem | None) -> None:
        """Backend reports the authoritative value of a watched key (in the order it learned it)."""
        with self._lock:
            state = self._keys.get(key)
            if state is None:
                return
            state.store_item = item
            effective = state.effective()
            listeners = list(state.listeners)
        for lst in listeners:
            lst.mailbox.post(effective)  # type: ignore[arg-type]
        self._snapshot_write(key, item)

    def _apply_instances(self, service: str, instances: list[Instance]) -> None:
        instances = sorted(instances, key=lambda i: i.id)
        with self._lock:
            st = self._services.get(service)
            if st is None or st.instances == instances:
                return
            st.instances = instances
            watches = list(st.watches)
        for w in watches:
            w.mailbox.post(list(instances))
        if self._snapshot is not None:
            self._snapshot.write_instances(service, instances)

    def _watched_keys(self) -> list[Key]:
        with self._lock:
            return list(self._keys)

    def _watched_services(self) -> list[str]:
        with self._lock:
            return list(self._services)

    def _service_instances(self, service: str) -> list[Instance] | None:
        with self._lock:
            st = self._services.get(service)
            return None if st is None or st.instances is None else list(st.instances)

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise StoreClosed(f"store {self.url} is closed")

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # --------------------------------------------------------------------------- internals

    @staticmethod
    def _key(group: object, data_id: object) -> Key:
        return validate_key(group, "group"), validate_key(data_id, "data id")

    @staticmethod
    def _check_expected(expected: object) -> None:
        if isinstance(expected, bool) or not isinstance(expected, int) or expected < 0:
            raise InvalidKey(
                f"expected_revision must be a non-negative integer or None, got {expected!r}"
            )

    def _cached(self, key: Key) -> object:
        with self._lock:
            state = self._keys.get(key)
            if state is not None and isinstance(state.store_item, ConfigItem):
                item = state.store_item
                return ConfigItem(
                    item.data_id,
                    item.group,
                    item.content,
                    item.revision,
                    item.md5,
                    item.modified,
                    "snapshot",
                )
        if self._snapshot is not None and (snap := self._snapshot.read(*key)) is not None:
            return snap
        return _UNSET

    def _snapshot_write(self, key: Key, item: ConfigItem | None) -> None:
        if self._snapshot is None or (item is not None and item.source != "store"):
            return
        with self._lock:
            box = self._snapshot_box.get(key)
            if box is None:
                box = self._snapshot_box[key] = Mailbox(
                    functools.partial(self._snapshot_apply, key)
                )
        box.post(item)

    def _snapshot_apply(self, key: Key, item: ConfigItem | None) -> None:
        assert self._snapshot is not None
        revision = 0 if item is None else item.revision
        if self._snapshotted.get(key) == revision:
            return
        if item is None:
            self._snapshot.delete(*key)
        else:
            self._snapshot.write(item)
        self._snapshotted[key] = revision

    def _drop_listener(self, listener: _ConfigListener) -> None:
        with self._lock:
            state = self._keys.get(listener.key)
            if state is None or listener not in state.listeners:
                return
            state.listeners.remove(listener)
            if state.listeners:
                return
            del self._keys[listener.key]
        if not self.closed:
            self._backend_unwatch_key(listener.key)

    def _drop_instance_watch(self, watch: _InstanceWatch) -> None:
        with self._lock:
            st = self._services.get(watch.service)
            if st is None or watch not in st.watches:
                return
            st.watches.remove(watch)
            if st.watches:
                return
            del self._services[watch.service]
        if not self.closed:
            self._backend_unwatch_service(watch.service)

    def _ensure_failover_poller(self) -> None:
        if self._failover is None or self._failover_thread is not None:
            return
        with self._lock:
            if self._failover_thread is None:
                self._failover_thread = threading.Thread(
                    target=self._poll_failover, name="config-store-failover", daemon=True
                )
                self._failover_thread.start()

    def _poll_failover(self) -> None:
        assert self._failover is not None
        while not self._closed.wait(self._failover_poll_interval):
            for key in self._watched_keys():
                item = self._failover.read(*key)
                with self._lock:
                    state = self._keys.get(key)
                    if state is None:
                        continue
                    before = state.failover_item
                    if (before.md5 if before else None) == (item.md5 if item else None):
                        continue
                    state.failover_item = item
                    effective = state.effective()
                    listeners = list(state.listeners)
                if item is not None:
                    log.warning("failover file overrides %s/%s", *key)
                if effective is not _UNSET:
                    for lst in listeners:
                        lst.mailbox.post(effective)  # type: ignore[arg-type]

    # ------------------------------------------------------------------------ backend hooks

    @abc.abstractmethod
    def _backend_wait_connected(self, timeout: float | None) -> bool: ...

    @abc.abstractmethod
    def _backend_read(self, key: Key) -> ConfigItem | None: ...

    @abc.abstractmethod
    def _backend_publish(self, key: Key, content: bytes, md5: str, expected: int | None) -> int: ...

    @abc.abstractmethod
    def _backend_remove(self, key: Key, expected: int | None) -> None: ...

    @abc.abstractmethod
    def _backend_history(self, key: Key, limit: int) -> list[ConfigItem]: ...

    @abc.abstractmethod
    def _backend_keys(self, group: str) -> list[str]: ...

    @abc.abstractmethod
    def _backend_watch_key(self, key: Key) -> None: ...

    @abc.abstractmethod
    def _backend_unwatch_key(self, key: Key) -> None: ...

    @abc.abstractmethod
    def _backend_register(self, instance: Instance, document: bytes) -> BaseRegistration: ...

    @abc.abstractmethod
    def _backend_instances(self, service: str) -> list[Instance]: ...

    @abc.abstractmethod
    def _backend_watch_service(self, service: str) -> None: ...

    @abc.abstractmethod
    def _backend_unwatch_service(self, service: str) -> None: ...

    @abc.abstractmethod
    def _backend_close(self) -> None: ...


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
