"""The embedded backend: one SQLite file (WAL) shared by the processes of one host.

Change notification: every write appends to a ``changes`` log; one poller thread per process and
database watches ``PRAGMA data_version`` (which moves when *another* connection commits) every few
milliseconds, reads the new log rows and re-reads the keys and services its backends watch. All
reports happen on that one thread, in log order, to the sink of each backend that watches the key
or service. Registrations are leases renewed by a heartbeat thread. A lease names the process
that holds it (``_owner.py``): a lease whose process is gone is dead at once. ``instances()``
never lists it, the poller looks at the holders of watched services every ``_SWEEP_S`` and tells
watchers, and every heartbeat pass deletes such leases; so a SIGKILLed instance leaves every
client's view within a second. A process that is alive but hung keeps its lease until
``lease_ttl`` runs out.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ._backend import Key, Sink, StoreState, check_cas as _check_cas, parse_instance
from ._errors import (
    ConfigStoreError,
    NotFound,
    PermissionDenied,
    StoreClosed,
    StoreUnavailable,
)
from ._owner import Owner, dead_owners, is_dead
from ._types import ConfigItem, Instance, utc_from_timestamp
from ._url import StoreUrl

__all__ = ["SqliteBackend"]

log = logging.getLogger("config_store.sqlite")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS config (
    grp TEXT NOT NULL, data_id TEXT NOT NULL, revision INTEGER NOT NULL, md5 TEXT NOT NULL,
    modified REAL NOT NULL, content BLOB NOT NULL, PRIMARY KEY (grp, data_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history (
    grp TEXT NOT NULL, data_id TEXT NOT NULL, revision INTEGER NOT NULL, md5 TEXT NOT NULL,
    modified REAL NOT NULL, content BLOB NOT NULL,
    PRIMARY KEY (grp, data_id, revision)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL, grp TEXT NOT NULL, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS instances (
    service TEXT NOT NULL, id TEXT NOT NULL, document BLOB NOT NULL, owner TEXT NOT NULL,
    expires REAL NOT NULL, PRIMARY KEY (service, id)) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (k, v) VALUES ('schema_version', '1');
"""
_CHANGES_KEPT = 10_000
_KIND_CONFIG = "config"
_KIND_SERVICE = "service"
_SWEEP_S = 0.2
"""How often a poller looks for dead holders of the services its stores watch."""


def _connect(path: str, read_only: bool) -> sqlite3.Connection:
    if read_only:
        uri = "file:" + Path(path).resolve().as_posix() + "?mode=ro"
        conn = sqlite3.connect(
            uri, uri=True, timeout=5.0, isolation_level=None, check_same_thread=False
        )
    else:
        conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


@contextlib.contextmanager
def _errors(what: str) -> Iterator[None]:
    """Convert sqlite3 errors once, here."""
    try:
        yield
    except ConfigStoreError:
        raise
    except sqlite3.OperationalError as exc:
        text = str(exc)
        if "readonly" in text or "read-only" in text:
            raise PermissionDenied(f"{what}: the store was opened read-only") from exc
        raise StoreUnavailable(f"{what}: {text}") from exc
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"{what}: {exc}") from exc


def _row_item(group: str, data_id: str, row: tuple[int, str, float, bytes]) -> ConfigItem:
    revision, md5, modified, content = row
    return ConfigItem(data_id, group, bytes(content), revision, md5, utc_from_timestamp(modified))


class _Poller:
    """One per process and database file: watches for commits and reports them to the backends
    of that file that watch the key or service."""

    _registry: ClassVar[dict[str, _Poller]] = {}
    _registry_lock = threading.Lock()

    @classmethod
    def attach(cls, backend: SqliteBackend) -> _Poller:
        with cls._registry_lock:
            poller = cls._registry.get(backend.db_key)
            if poller is None:
                poller = cls._registry[backend.db_key] = _Poller(backend)
            poller._backends.add(backend)
            poller._interval = min(poller._interval, backend.poll_interval)
            return poller

    def detach(self, backend: SqliteBackend) -> None:
        with self._registry_lock:
            self._backends.discard(backend)
            if self._backends:
                return
            del self._registry[backend.db_key]
        self._stop.set()
        self._wake.set()

    def __init__(self, backend: SqliteBackend):
        self._path = backend.path
        self._read_only = backend.read_only
        self._backends: set[SqliteBackend] = set()
        self._interval = backend.poll_interval
        self._lease_check = backend.lease_ttl / 4
        self._requests: list[tuple[SqliteBackend, str, str]] = []
        self._req_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._conn = _connect(self._path, self._read_only)
        self._version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        self._seq = self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0]
        self._thread = threading.Thread(
            target=self._run, name="config-store-sqlite-poller", daemon=True
        )
        self._thread.start()

    def request(self, backend: SqliteBackend, kind: str, name: str) -> None:
        """Ask for a (re-)read of a key (``kind`` "config", name "group\\0id") or a service."""
        with self._req_lock:
            self._requests.append((backend, kind, name))
        self._wake.set()

    def _run(self) -> None:
        next_lease_check = time.monotonic() + self._lease_check
        next_sweep = time.monotonic() + _SWEEP_S
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self._tick()
                now = time.monotonic()
                if now >= next_lease_check:
                    next_lease_check = now + self._lease_check
                    for backend in list(self._backends):
                        for service in backend.watched_services():
                            self._deliver_service(backend, service)
                elif now >= next_sweep:
                    next_sweep = now + _SWEEP_S
                    self._sweep()
            except sqlite3.Error as exc:
                log.warning("sqlite poller: %s", exc)
                time.sleep(0.1)
        self._conn.close()

    def _tick(self) -> None:
        with self._req_lock:
            requests, self._requests = self._requests, []
        changed = self._new_changes()
        for backend, kind, name in requests:
            if kind == _KIND_CONFIG:
                grp, _, data_id = name.partition("\0")
                if (grp, data_id) in backend.watched_keys():
                    backend.report_config((grp, data_id), self._read(grp, data_id))
            elif name in backend.watched_services():
                self._deliver_service(backend, name, force=True)
        if changed:
            self._apply_changes(changed)

    def _new_changes(self) -> list[tuple[str, str, str]]:
        version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        changed: list[tuple[str, str, str]] = []
        if version != self._version:
            self._version = version
            rows = self._conn.execute(
                "SELECT seq, kind, grp, name FROM changes WHERE seq > ? ORDER BY seq", (self._seq,)
            ).fetchall()
            if rows and rows[0][0] != self._seq + 1:
                self._resync_all()  # the log was pruned past us: re-read everything watched
            if rows:
                self._seq = rows[-1][0]
            changed = [(kind, grp, name) for _, kind, grp, name in rows]
        return changed

    def _apply_changes(self, changed: list[tuple[str, str, str]]) -> None:
        items: dict[Key, ConfigItem | None] = {}
        services: set[str] = set()
        for kind, grp, name in changed:
            if kind == _KIND_CONFIG:
                items[(grp, name)] = None  # placeholder; read once below
            else:
                services.add(grp)
        for key in items:
            items[key] = self._read(*key)
        for backend in list(self._backends):
            watched = backend.watched_keys()
            for key, item in items.items():
                if key in watched:
                    backend.report_config(key, item)
            for service in services & backend.watched_services():
                self._deliver_service(backend, service)

    def _sweep(self) -> None:
        """Re-deliver the watched services that a dead process still holds a lease of."""
        watched = [(b, svc) for b in list(self._backends) for svc in b.watched_services()]
        if not watched:
            return
        rows = self._conn.execute("SELECT DISTINCT service, owner FROM instances").fetchall()
        dead = dead_owners(owner for _, owner in rows)
        held_by_dead = {service for service, owner in rows if owner in dead}
        for backend, service in watched:
            if service in held_by_dead:
                self._deliver_service(backend, service)

    def _resync_all(self) -> None:
        for backend in list(self._backends):
            for key in backend.watched_keys():
                backend.report_config(key, self._read(*key))
            for service in backend.watched_services():
                self._deliver_service(backend, service)

    def _read(self, grp: str, data_id: str) -> ConfigItem | None:
        row = self._conn.execute(
            "SELECT revision, md5, modified, content FROM config WHERE grp = ? AND data_id = ?",
            (grp, data_id),
        ).fetchone()
        return None if row is None else _row_item(grp, data_id, row)

    def _deliver_service(self, backend: SqliteBackend, service: str, force: bool = False) -> None:
        backend.report_instances(service, _select_instances(self._conn, service), force)


def _select_instances(conn: sqlite3.Connection, service: str) -> list[Instance]:
    """The service's leases that are neither expired nor held by a dead process."""
    rows = conn.execute(
        "SELECT id, document, owner FROM instances WHERE service = ? AND expires > ? ORDER BY id",
        (service, time.time()),
    ).fetchall()
    out = []
    for node_id, doc, owner in rows:
        if is_dead(owner):
            continue
        try:
            out.append(parse_instance(service, node_id, bytes(doc)))
        except ConfigStoreError as exc:
            log.warning("%s", exc)
    return out


def _reap_dead(conn: sqlite3.Connection) -> None:
    """Delete the leases of dead processes, in the caller's write transaction, and log each
    change so that every other client's poller hears of it."""
    rows = conn.execute("SELECT service, id, owner FROM instances").fetchall()
    dead = dead_owners(owner for _, _, owner in rows)
    for service, node_id, owner in rows:
        if owner in dead:
            conn.execute(
                "DELETE FROM instances WHERE service = ? AND id = ? AND owner = ?",
                (service, node_id, owner),
            )
            _log_change(conn, _KIND_SERVICE, service, node_id)
            log.info("removed %s/%s: its process (%s) is gone", service, node_id, owner)


def _log_change(conn: sqlite3.Connection, kind: str, grp: str, name: str) -> None:
    seq = conn.execute(
        "INSERT INTO changes (kind, grp, name) VALUES (?, ?, ?)", (kind, grp, name)
    ).lastrowid
    if seq is not None and seq % 1000 == 0:
        conn.execute("DELETE FROM changes WHERE seq <= ?", (seq - _CHANGES_KEPT,))


@dataclass(frozen=True)
class _Lease:
    """A registration this client renews."""

    instance: Instance
    document: bytes


class SqliteBackend:
    """The embedded ``Backend``; see the module docstring.

    Args:
        url: a parsed ``sqlite://`` URL (options ``mode=ro``, ``lease_ttl``,
            ``poll_interval_ms``).
        history_keep: revisions kept per key.
    """

    def __init__(self, url: StoreUrl, *, history_keep: int = 100):
        self._url = url
        self.db_key = os.path.realpath(url.path)
        self._identity = (
            "sqlite_" + hashlib.sha1(self.db_key.encode(), usedforsecurity=False).hexdigest()[:16]
        )
        self._history_keep = history_keep
        self.path = url.path
        self.read_only = url.options.get("mode", "rw") == "ro"
        self.lease_ttl = url.option_float("lease_ttl", 5.0)
        self.poll_interval = url.option_float("poll_interval_ms", 10.0) / 1000.0
        self._owner = Owner.this_process().encode()
        self._db_lock = threading.Lock()
        self._closed = threading.Event()
        self._sink: Sink | None = None
        self._watch_lock = threading.Lock()
        self._keys: set[Key] = set()
        self._services: set[str] = set()
        self._delivered: dict[str, list[Instance]] = {}
        self._leases: dict[tuple[str, str], _Lease] = {}
        self._heartbeat: threading.Thread | None = None
        self._poller: _Poller | None = None

    def start(self, sink: Sink) -> None:
        """Open the file (creating it and its schema unless read-only) and start polling it.

        Raises:
            StoreUnavailable: the file cannot be opened (or, read-only, does not exist).
        """
        if self._sink is not None:
            raise RuntimeError("a SqliteBackend serves one store; it was started already")
        url = self._url
        with _errors(f"cannot open {url.path}"):
            if not self.read_only:
                Path(url.path).parent.mkdir(parents=True, exist_ok=True)
            elif not Path(url.path).exists():
                raise StoreUnavailable(
                    f"{url.path} does not exist (read-only mode does not create it)"
                )
            conn = _connect(url.path, self.read_only)
            try:
                if not self.read_only:
                    conn.execute("PRAGMA journal_mode = WAL")
                    conn.execute("PRAGMA synchronous = FULL")
                    conn.executescript(_SCHEMA)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        self._sink = sink
        self._poller = _Poller.attach(self)

    # ------------------------------------------------------------------------------ about

    @property
    def url(self) -> str:
        return self._url.redacted()

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def history_keep(self) -> int:
        return self._history_keep

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def state(self) -> StoreState:
        return "closed" if self.closed else "connected"

    def wait_connected(self, timeout: float | None) -> bool:
        return not self.closed

    # ---------------------------------------------------------- watched keys, for the poller

    def watched_keys(self) -> set[Key]:
        with self._watch_lock:
            return set(self._keys)

    def watched_services(self) -> set[str]:
        with self._watch_lock:
            return set(self._services)

    def report_config(self, key: Key, item: ConfigItem | None) -> None:
        """Poller thread: tell the sink what a watched key holds."""
        if self._sink is not None:
            self._sink.config_changed(key, item)

    def report_instances(self, service: str, found: list[Instance], force: bool) -> None:
        """Poller thread: tell the sink a watched service's instances when they changed since
        the last report (or always, with ``force``: a new watch)."""
        with self._watch_lock:
            if service not in self._services:
                return
            if not force and self._delivered.get(service) == found:
                return
            self._delivered[service] = found
        if self._sink is not None:
            self._sink.instances_changed(service, found)

    # ------------------------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._db_lock, _errors(what):
            if self.closed:
                raise StoreClosed(f"store {self.url} is closed")
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, what: str, sql: str, args: tuple[object, ...]) -> list[tuple[object, ...]]:
        with self._db_lock, _errors(what):
            if self.closed:
                raise StoreClosed(f"store {self.url} is closed")
            return self._conn.execute(sql, args).fetchall()

    # -------------------------------------------------------------------------------- config

    def read(self, key: Key) -> ConfigItem | None:
        rows = self._query(
            f"cannot read {key[0]}/{key[1]}",
            "SELECT revision, md5, modified, content FROM config WHERE grp = ? AND data_id = ?",
            key,
        )
        return _row_item(*key, rows[0]) if rows else None  # type: ignore[arg-type]

    def publish(self, key: Key, content: bytes, md5: str, expected: int | None) -> int:
        grp, data_id = key
        with self._write(f"cannot publish {grp}/{data_id}") as conn:
            row = conn.execute(
                "SELECT revision FROM config WHERE grp = ? AND data_id = ?", key
            ).fetchone()
            current = None if row is None else int(row[0])
            _check_cas(key, expected, current)
            if current is None:
                current = conn.execute(
                    "SELECT COALESCE(MAX(revision), 0) FROM history WHERE grp = ? AND data_id = ?",
                    key,
                ).fetchone()[0]
            revision = int(current) + 1
            now = time.time()
            values = (grp, data_id, revision, md5, now, content)
            conn.execute("INSERT OR REPLACE INTO config VALUES (?, ?, ?, ?, ?, ?)", values)
            conn.execute("INSERT INTO history VALUES (?, ?, ?, ?, ?, ?)", values)
            conn.execute(
                "DELETE FROM history WHERE grp = ? AND data_id = ? AND revision <= ?",
                (grp, data_id, revision - self.history_keep),
            )
            _log_change(conn, _KIND_CONFIG, grp, data_id)
        return revision

    def remove(self, key: Key, expected: int | None) -> None:
        grp, data_id = key
        with self._write(f"cannot remove {grp}/{data_id}") as conn:
            row = conn.execute(
                "SELECT revision FROM config WHERE grp = ? AND data_id = ?", key
            ).fetchone()
            if row is None:
                raise NotFound(f"{grp}/{data_id} does not exist")
            _check_cas(key, expected, int(row[0]))
            conn.execute("DELETE FROM config WHERE grp = ? AND data_id = ?", key)
            _log_change(conn, _KIND_CONFIG, grp, data_id)

    def history(self, key: Key, limit: int) -> list[ConfigItem]:
        rows = self._query(
            f"cannot read history of {key[0]}/{key[1]}",
            "SELECT revision, md5, modified, content FROM history WHERE grp = ? AND data_id = ? "
            "ORDER BY revision DESC LIMIT ?",
            (*key, limit),
        )
        return [_row_item(*key, r) for r in rows]  # type: ignore[arg-type]

    def keys(self, group: str) -> list[str]:
        rows = self._query("cannot list", "SELECT data_id FROM config WHERE grp = ?", (group,))
        return [str(r[0]) for r in rows]

    def watch_key(self, key: Key) -> None:
        with self._watch_lock:
            self._keys.add(key)
        if self._poller is not None:
            self._poller.request(self, _KIND_CONFIG, "\0".join(key))

    def unwatch_key(self, key: Key) -> None:
        with self._watch_lock:
            self._keys.discard(key)

    # ----------------------------------------------------------------------------- instances

    def instances(self, service: str) -> list[Instance]:
        with self._db_lock, _errors(f"cannot list instances of {service}"):
            return _select_instances(self._conn, service)

    def watch_service(self, service: str) -> None:
        with self._watch_lock:
            self._services.add(service)
        if self._poller is not None:
            self._poller.request(self, _KIND_SERVICE, service)

    def unwatch_service(self, service: str) -> None:
        with self._watch_lock:
            self._services.discard(service)
            self._delivered.pop(service, None)

    def register(self, instance: Instance, document: bytes) -> None:
        lease = _Lease(instance, document)
        self._upsert_lease(lease)
        with self._db_lock:
            self._leases[(instance.service, instance.id)] = lease
            if self._heartbeat is None:
                self._heartbeat = threading.Thread(
                    target=self._renew_leases, name="config-store-heartbeat", daemon=True
                )
                self._heartbeat.start()

    def _upsert_lease(self, lease: _Lease) -> None:
        inst = lease.instance
        with self._write(f"cannot register {inst.service}/{inst.id}") as conn:
            conn.execute(
                "INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?)",
                (inst.service, inst.id, lease.document, self._owner, time.time() + self.lease_ttl),
            )
            _log_change(conn, _KIND_SERVICE, inst.service, inst.id)

    def deregister(self, instance: Instance) -> None:
        service, node_id = instance.service, instance.id
        with self._db_lock:
            self._leases.pop((service, node_id), None)
        try:
            with self._write(f"cannot deregister {service}/{node_id}") as conn:
                conn.execute(
                    "DELETE FROM instances WHERE service = ? AND id = ? AND owner = ?",
                    (service, node_id, self._owner),
                )
                _log_change(conn, _KIND_SERVICE, service, node_id)
        except StoreClosed:
            pass
        except ConfigStoreError as exc:
            log.warning("%s (the lease expires by itself)", exc)

    def _renew_leases(self) -> None:
        interval = self.lease_ttl / 5
        while not self._closed.wait(interval):
            with self._db_lock:
                leases = list(self._leases.values())
            if not leases:
                continue
            try:
                with self._write("cannot renew leases") as conn:
                    renewed = conn.execute(
                        "UPDATE instances SET expires = ? WHERE owner = ?",
                        (time.time() + self.lease_ttl, self._owner),
                    ).rowcount
                    if renewed < len(leases):
                        self._restore_leases(conn, leases)
                    _reap_dead(conn)
                    # purge leases that expired long ago (hung processes, older writers)
                    conn.execute("DELETE FROM instances WHERE expires < ?", (time.time() - 60,))
            except StoreClosed:
                return
            except ConfigStoreError as exc:
                log.warning("%s", exc)

    def _restore_leases(self, conn: sqlite3.Connection, leases: list[_Lease]) -> None:
        for lease in leases:
            inst = lease.instance
            owner = conn.execute(
                "SELECT owner FROM instances WHERE service = ? AND id = ?", (inst.service, inst.id)
            ).fetchone()
            if owner is None or owner[0] != self._owner:
                log.info("re-registering %s/%s", inst.service, inst.id)
                conn.execute(
                    "INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?)",
                    (
                        inst.service,
                        inst.id,
                        lease.document,
                        self._owner,
                        time.time() + self.lease_ttl,
                    ),
                )
                _log_change(conn, _KIND_SERVICE, inst.service, inst.id)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self._poller is None:
            return  # never opened
        with self._db_lock:
            leases = list(self._leases.values())
        if leases and not self.read_only:
            with self._db_lock, contextlib.suppress(sqlite3.Error):
                self._conn.execute("BEGIN IMMEDIATE")
                for lease in leases:
                    inst = lease.instance
                    self._conn.execute(
                        "DELETE FROM instances WHERE service = ? AND id = ? AND owner = ?",
                        (inst.service, inst.id, self._owner),
                    )
                    _log_change(self._conn, _KIND_SERVICE, inst.service, inst.id)
                self._conn.execute("COMMIT")
        self._poller.detach(self)
        with self._db_lock:
            self._conn.close()
