"""Who hears what: the store's listeners and instance watches, the failover overlay and its poller.

``Watches`` is the ``Sink`` a backend reports into. It keeps, per watched key, the backend's last
value and the operator's failover file, and hands the effective one (failover first) to every
listener's mailbox; per watched service, the last instance list. It asks the backend to watch a
key or service when the first subscriber comes and to stop when the last one leaves. Callbacks
never run here: mailboxes (``_dispatch.py``) carry them to the callback pool, where each listener
applies its monotonic-revision rule.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Final

from ._backend import Backend, Key
from ._dispatch import Mailbox
from ._snapshot import FailoverDir, SnapshotDir, SnapshotWriter
from ._types import ConfigCallback, ConfigItem, Instance, InstanceCallback

__all__ = ["ConfigListener", "InstanceWatch", "Watches"]

log = logging.getLogger("config_store")

_UNSET: Final = object()


class ConfigListener:
    """Handle returned by ``add_listener``; applies the per-listener monotonic rule."""

    def __init__(self, watches: Watches, key: Key, callback: ConfigCallback):
        self._watches = watches
        self.key = key
        self._last_revision = 0
        self._last: object = _UNSET  # _UNSET, None, or the last ConfigItem delivered
        self.mailbox: Mailbox[ConfigItem | None] = Mailbox(callback, self._accept)

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
        """Stop delivering; idempotent."""
        self.mailbox.close()
        self._watches.drop_listener(self)


class InstanceWatch:
    """Handle returned by ``watch_instances``."""

    def __init__(self, watches: Watches, service: str, callback: InstanceCallback):
        self._watches = watches
        self.service = service
        self.mailbox: Mailbox[list[Instance]] = Mailbox(callback)

    def cancel(self) -> None:
        """Stop delivering; idempotent."""
        self.mailbox.close()
        self._watches.drop_instance_watch(self)


@dataclass
class _KeyState:
    listeners: list[ConfigListener] = field(default_factory=list)
    store_item: object = _UNSET  # _UNSET until known, then ConfigItem | None
    failover_item: ConfigItem | None = None

    def effective(self) -> object:
        return self.failover_item if self.failover_item is not None else self.store_item


@dataclass
class _ServiceState:
    watches: list[InstanceWatch] = field(default_factory=list)
    instances: list[Instance] | None = None


class Watches:
    """The listener registry of one store, and the ``Sink`` of its backend."""

    def __init__(
        self,
        backend: Backend,
        snapshot: SnapshotDir | None,
        failover: FailoverDir | None,
        failover_poll_interval: float,
    ):
        self._backend = backend
        self._snapshot = snapshot
        self._writer = SnapshotWriter(snapshot) if snapshot is not None else None
        self._failover = failover
        self._poll_interval = failover_poll_interval
        self._lock = threading.RLock()
        self._keys: dict[Key, _KeyState] = {}
        self._services: dict[str, _ServiceState] = {}
        self._closed = threading.Event()
        self._poller: threading.Thread | None = None

    # ------------------------------------------------------------------------- subscribing

    def add_listener(self, key: Key, callback: ConfigCallback) -> ConfigListener:
        """Subscribe; the current value (failover, store, or the snapshot while the store is
        unreachable) is posted at once when known."""
        listener = ConfigListener(self, key, callback)
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
                and self._backend.state != "connected"
                and self._snapshot is not None
            ):
                snap = self._snapshot.read(*key)
                if snap is not None:
                    state.store_item = current = snap
        if current is not _UNSET:
            listener.mailbox.post(current)  # type: ignore[arg-type]
        if fresh:
            self._backend.watch_key(key)
            self._ensure_failover_poller()
        return listener

    def watch_instances(self, service: str, callback: InstanceCallback) -> InstanceWatch:
        """Subscribe; the last known list (or the snapshot's while unreachable) is posted."""
        watch = InstanceWatch(self, service, callback)
        with self._lock:
            st = self._services.get(service)
            fresh = st is None
            if st is None:
                st = self._services[service] = _ServiceState()
                if self._backend.state != "connected" and self._snapshot is not None:
                    st.instances = self._snapshot.read_instances(service)
            st.watches.append(watch)
            current = st.instances
        if current is not None:
            watch.mailbox.post(list(current))
        if fresh:
            self._backend.watch_service(service)
        return watch

    def drop_listener(self, listener: ConfigListener) -> None:
        with self._lock:
            state = self._keys.get(listener.key)
            if state is None or listener not in state.listeners:
                return
            state.listeners.remove(listener)
            if state.listeners:
                return
            del self._keys[listener.key]
        if not self._closed.is_set():
            self._backend.unwatch_key(listener.key)

    def drop_instance_watch(self, watch: InstanceWatch) -> None:
        with self._lock:
            st = self._services.get(watch.service)
            if st is None or watch not in st.watches:
                return
            st.watches.remove(watch)
            if st.watches:
                return
            del self._services[watch.service]
        if not self._closed.is_set():
            self._backend.unwatch_service(watch.service)

    # ---------------------------------------------------------------- what the store knows

    def cached(self, key: Key) -> ConfigItem | None:
        """The backend's last value of a watched key, marked as a local copy; None if unknown."""
        with self._lock:
            state = self._keys.get(key)
            item = None if state is None else state.store_item
        if not isinstance(item, ConfigItem):
            return None
        return ConfigItem(
            item.data_id, item.group, item.content, item.revision, item.md5, item.modified,
            "snapshot",
        )  # fmt: skip

    def instances(self, service: str) -> list[Instance] | None:
        """The last list of a watched service; None if not watched or not known yet."""
        with self._lock:
            st = self._services.get(service)
            return None if st is None or st.instances is None else list(st.instances)

    def snapshot_item(self, key: Key, item: ConfigItem | None) -> None:
        """Record a value read from the store in the snapshot (off this thread)."""
        if self._writer is not None:
            self._writer.post(*key, item)

    # ------------------------------------------------------------------------------- sink

    def config_changed(self, key: Key, item: ConfigItem | None) -> None:
        with self._lock:
            state = self._keys.get(key)
            if state is None:
                return
            state.store_item = item
            effective = state.effective()
            listeners = list(state.listeners)
        for lst in listeners:
            lst.mailbox.post(effective)  # type: ignore[arg-type]
        self.snapshot_item(key, item)

    def instances_changed(self, service: str, instances: list[Instance]) -> None:
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

    # --------------------------------------------------------------------------- failover

    def _ensure_failover_poller(self) -> None:
        if self._failover is None or self._poller is not None:
            return
        with self._lock:
            if self._poller is None:
                self._poller = threading.Thread(
                    target=self._poll_failover, name="config-store-failover", daemon=True
                )
                self._poller.start()

    def _poll_failover(self) -> None:
        assert self._failover is not None
        while not self._closed.wait(self._poll_interval):
            with self._lock:
                keys = list(self._keys)
            for key in keys:
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

    def close(self) -> None:
        """Stop every delivery and the failover poller; the backend is closed by the store."""
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
