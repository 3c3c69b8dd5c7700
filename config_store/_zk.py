"""The ZooKeeper backend, and the only module of the library that imports kazoo.

Threads: kazoo's connection thread runs ``_on_state`` (which only sets flags and wakes the worker),
kazoo's watch thread runs the watch functions (which only issue a read or mark an item dirty).
Watched keys are read asynchronously and reported to the sink from kazoo's completion thread, in
the order read (ZooKeeper answers one session in order). One worker thread of ours re-reads
watched services and reports them, re-creates registrations after a session loss, and reconciles
every watched key and service periodically, so a missed watch event is repaired. Writes run on
the caller's thread and wait (bounded) for a connection while ZooKeeper is unreachable.

kazoo logs through ``kazoo.client`` as usual, except that its warnings about failed connection
attempts are debug records until this client first connected and once it is closing: what they
say then is already said by our own warning (unreachable after ``connect_timeout``) and by
``StoreUnavailable`` (``kazoo_log_level``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

from . import _envelope
from ._backend import Key, Sink, StoreState, check_cas as _check_cas, parse_instance
from ._errors import (
    ConfigStoreError,
    Conflict,
    NotFound,
    PermissionDenied,
    StoreClosed,
    StoreUnavailable,
)
from ._keys import (
    config_group_path,
    config_path,
    history_node,
    history_path,
    instances_path,
    parse_history_node,
)
from ._types import ConfigItem, Instance, utc_from_timestamp
from ._url import StoreUrl

try:
    from kazoo.client import KazooClient
    from kazoo.exceptions import (
        AuthFailedError,
        BadVersionError,
        ConnectionClosedError,
        ConnectionLoss,
        KazooException,
        NoAuthError,
        NodeExistsError,
        NoNodeError,
        OperationTimeoutError,
        RolledBackError,
        RuntimeInconsistency,
        SessionExpiredError,
    )
    from kazoo.handlers.threading import KazooTimeoutError
    from kazoo.protocol.states import KazooState
    from kazoo.retry import KazooRetry
    from kazoo.security import OPEN_ACL_UNSAFE, make_acl, make_digest_acl
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("the zk:// backend needs kazoo: pip install 'autoai[zk]'") from exc

__all__ = [
    "RECONNECT_BACKOFF",
    "ZkBackend",
    "kazoo_log_level",
    "reconnect_bound",
    "reconnect_pauses",
]

log = logging.getLogger("config_store.zk")

_UNREACHABLE = (
    ConnectionLoss,
    SessionExpiredError,
    ConnectionClosedError,
    OperationTimeoutError,
    KazooTimeoutError,
)
_ERRORS: dict[type[BaseException], type[ConfigStoreError]] = {
    NoNodeError: NotFound,
    BadVersionError: Conflict,
    NodeExistsError: Conflict,
    NoAuthError: PermissionDenied,
    AuthFailedError: PermissionDenied,
    **dict.fromkeys(_UNREACHABLE, StoreUnavailable),
}
RECONNECT_BACKOFF: Final = {"delay": 0.05, "backoff": 2, "max_jitter": 0.2, "max_delay": 1.0}
"""kazoo's pause between two rounds over the hosts while none answers: doubling from 50 ms to at
most ``max_delay``, then ±``max_jitter`` of it (kazoo 2.11 multiplies by ``uniform(1 - j, 1 + j)``).
So however long an outage lasted, a client tries again at most 1.2 s after the last refusal, and is
connected at most that long (plus one handshake) after the ensemble is reachable: below the 2 s
that ``reconnect_bound()`` states and the tests hold."""
_PUBLISH_ATTEMPTS = 20
# A publish writes the content twice in one multi-op (current + history); the whole request must
# stay under ZooKeeper's jute.maxbuffer (1 MiB less a little). Larger content is written once, in
# the history entry, and the current node refers to it.
_INLINE_LIMIT = 256 * 1024
_CONNECT_NOISE = ("Connection dropped", "Connection time-out", "Failed connecting to Zookeeper")


def reconnect_bound() -> float:
    """The longest pause, in seconds, between two reconnection rounds (``RECONNECT_BACKOFF``)."""
    return float(RECONNECT_BACKOFF["max_delay"]) * (1.0 + float(RECONNECT_BACKOFF["max_jitter"]))


def reconnect_pauses(rounds: int) -> list[float]:
    """The pauses kazoo itself takes over ``rounds`` failed reconnection rounds under
    ``RECONNECT_BACKOFF`` (its real retry loop, with sleeping recorded instead of done)."""
    pauses: list[float] = []
    failures = iter(range(rounds))

    def round_over_the_hosts() -> None:
        if next(failures, None) is not None:
            raise ConnectionLoss("refused")

    KazooRetry(max_tries=-1, sleep_func=pauses.append, **RECONNECT_BACKOFF)(round_over_the_hosts)
    return pauses


@contextlib.contextmanager
def _errors(what: str) -> Iterator[None]:
    """Convert kazoo errors once, here: ``raise Ours(...) from exc``."""
    try:
        yield
    except ConfigStoreError:
        raise
    except (KazooException, KazooTimeoutError) as exc:
        ours = next((o for k, o in _ERRORS.items() if isinstance(exc, k)), ConfigStoreError)
        raise ours(f"{what}: {type(exc).__name__} {exc}".rstrip()) from exc


def kazoo_log_level(level: int, msg: object, *, connected_once: bool, closing: bool) -> int:
    """The level at which one of kazoo's records is passed on.

    kazoo warns about every failed connection attempt and, when a client is stopped while still
    trying, that it failed "within the connection retry policy". Before the client was ever
    connected, and while it is closing, our own warning and ``StoreUnavailable`` already say so:
    those records become debug records. Drops of an established connection stay warnings.
    """
    if level < logging.WARNING or not isinstance(msg, str) or not msg.startswith(_CONNECT_NOISE):
        return level
    return logging.DEBUG if closing or not connected_once else level


class _KazooLog(logging.LoggerAdapter[logging.Logger]):
    """The logger one KazooClient writes to: kazoo's own, through ``kazoo_log_level``."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("kazoo.client"), {})
        self.connected_once = False
        self.closing = False

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        level = kazoo_log_level(
            level, msg, connected_once=self.connected_once, closing=self.closing
        )
        super().log(level, msg, *args, **kwargs)


class _Ephemeral:
    """A registration this client keeps alive (re-created after a session loss)."""

    def __init__(self, instance: Instance, document: bytes):
        self.instance = instance
        self.document = document
        self.path = _instance_path(instance)
        self.closed = False


def _instance_path(instance: Instance) -> str:
    return f"{instances_path(instance.service)}/{instance.id}"


class ZkBackend:
    """The ZooKeeper ``Backend``; see the module docstring.

    Args:
        url: a parsed ``zk://`` URL (options ``session_timeout``, ``connect_timeout``,
            ``write_timeout``, ``reader``).
        history_keep: revisions kept per key.
    """

    def __init__(self, url: StoreUrl, *, history_keep: int = 100):
        self._url = url
        self._identity = (
            "zk_" + "_".join(f"{h}_{p}" for h, p in url.hosts) + url.chroot.replace("/", "_")
        )
        self._history_keep = history_keep
        self._closed = threading.Event()
        self._sink: Sink | None = None
        self.connect_string = url.connect_string
        self.session_timeout = url.option_float("session_timeout", 10.0)
        self.connect_timeout = url.option_float("connect_timeout", 5.0)
        self.write_timeout = url.option_float("write_timeout", 5.0)
        self.op_timeout = max(self.session_timeout, 5.0)
        self.reconcile_interval = 60.0
        self._acl = _acl_for(url)
        auth = [("digest", f"{url.username}:{url.password}")] if url.username else None
        retry = {"max_tries": -1, **RECONNECT_BACKOFF}
        self._log = _KazooLog()
        self._zk = KazooClient(
            hosts=url.connect_string,
            timeout=self.session_timeout,
            connection_retry=retry,
            command_retry={**retry, "max_tries": 3},
            auth_data=auth,
            default_acl=self._acl,
            logger=self._log,
        )
        self._connected = threading.Event()
        self._suspended = False
        self._reconnected = False
        self._wake = threading.Event()
        self._dirty_keys: set[Key] = set()
        self._dirty_services: set[str] = set()
        self._dirty_regs: set[str] = set()
        self._confirm_empty: set[str] = set()
        self._delivered: dict[str, list[Instance]] = {}
        self._key_watch: dict[Key, Callable[[Any], None]] = {}
        self._svc_watch: dict[str, Callable[[Any], None]] = {}
        self._regs: dict[str, _Ephemeral] = {}
        self._ensured: set[str] = set()
        self._mutex = threading.Lock()
        self._zk.add_listener(self._on_state)
        self._worker = threading.Thread(target=self._run, name="config-store-zk", daemon=True)

    def start(self, sink: Sink) -> None:
        """Start connecting; wait at most ``connect_timeout`` (then go on in the background)."""
        if self._sink is not None:
            raise RuntimeError("a ZkBackend serves one store; it was started already")
        self._sink = sink
        self._worker.start()
        self._zk.start_async()
        if not self._connected.wait(self.connect_timeout):
            log.warning(
                "ZooKeeper %s unreachable after %.1fs; serving the local snapshot until it returns",
                self.url,
                self.connect_timeout,
            )

    # ------------------------------------------------------------------------------- about

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
    def client(self) -> KazooClient:
        """The kazoo client (for diagnostics and ``config_store.testing``; not for writes)."""
        return self._zk

    # ------------------------------------------------------------------- connection state

    def _on_state(self, state: str) -> None:
        """kazoo connection thread: never block, never call ZooKeeper here."""
        if state == KazooState.CONNECTED:
            self._log.connected_once = True
            self._suspended = False
            self._reconnected = True
            self._connected.set()
        else:
            self._connected.clear()
            self._suspended = state == KazooState.SUSPENDED
            if state == KazooState.LOST:
                log.info("ZooKeeper session lost; registrations are re-created on reconnect")
        self._wake.set()

    @property
    def state(self) -> StoreState:
        if self.closed:
            return "closed"
        if self._connected.is_set():
            return "connected"
        return "suspended" if self._suspended else "connecting"

    @property
    def session_id(self) -> int | None:
        """The ZooKeeper session id (for tests and diagnostics)."""
        cid = self._zk.client_id
        return None if cid is None else int(cid[0])

    def wait_connected(self, timeout: float | None) -> bool:
        return self._connected.wait(timeout)

    def _require_connection(self, what: str) -> None:
        if self.closed:
            raise StoreClosed(f"store {self.url} is closed")
        if not self._connected.wait(self.write_timeout):
            raise StoreUnavailable(
                f"{what}: ZooKeeper {self.url} unreachable for "
                f"{self.write_timeout:.1f}s; nothing written"
            )

    # ------------------------------------------------------------------------ small helpers

    def _get(self, path: str, watch: Callable[[Any], None] | None = None) -> tuple[bytes, Any]:
        return self._zk.get_async(path, watch=watch).get(timeout=self.op_timeout)  # type: ignore[no-any-return]

    def _children(self, path: str, watch: Callable[[Any], None] | None = None) -> list[str]:
        return list(self._zk.get_children_async(path, watch=watch).get(timeout=self.op_timeout))

    def _ensure(self, path: str) -> None:
        if path in self._ensured:
            return
        self._zk.ensure_path_async(path, acl=self._acl).get(timeout=self.op_timeout)
        self._ensured.add(path)

    def _decode(self, key: Key, data: bytes) -> ConfigItem:
        """Decode a node; a reference is resolved by reading its history entry.

        Raises:
            ConfigStoreError: unreadable content; NoNodeError when a referenced entry vanished.
        """
        try:
            env = _envelope.decode(data)
            if env.ref:
                ref_data, _ = self._get(f"{history_path(*key)}/{history_node(env.revision)}")
                env = _envelope.decode(ref_data)
        except ValueError as exc:
            raise ConfigStoreError(f"{key[0]}/{key[1]} holds unreadable content: {exc}") from exc
        return ConfigItem(
            key[1], key[0], env.content, env.revision, env.md5, utc_from_timestamp(env.modified)
        )

    def _read_revision(self, key: Key) -> tuple[int | None, Any]:
        try:
            data, stat = self._get(config_path(*key))
        except NoNodeError:
            return None, None
        try:
            return _envelope.decode(data).revision, stat
        except ValueError as exc:
            raise ConfigStoreError(f"{key[0]}/{key[1]} holds unreadable content: {exc}") from exc

    def _history_revisions(self, key: Key) -> list[int]:
        try:
            names = self._children(history_path(*key))
        except NoNodeError:
            return []
        return sorted(r for n in names if (r := parse_history_node(n)) is not None)

    # ------------------------------------------------------------------------------ config

    def read(self, key: Key) -> ConfigItem | None:
        if not self._connected.is_set():
            raise StoreUnavailable(f"ZooKeeper {self.url} is not connected")
        with _errors(f"cannot read {key[0]}/{key[1]}"):
            for _ in range(3):
                try:
                    data, _ = self._get(config_path(*key))
                except NoNodeError:
                    return None
                try:
                    return self._decode(key, data)
                except NoNodeError:
                    continue  # the referenced history entry was pruned: a newer one exists
            raise StoreUnavailable(f"{key[0]}/{key[1]} changes too fast to be read")

    def _await_connection(self, deadline: float, what: str) -> None:
        if self.closed:
            raise StoreClosed(f"store {self.url} is closed")
        if not self._connected.wait(max(0.0, deadline - time.monotonic())):
            raise StoreUnavailable(
                f"{what}: ZooKeeper {self.url} unreachable for "
                f"{self.write_timeout:.1f}s; nothing written"
            )

    def publish(self, key: Key, content: bytes, md5: str, expected: int | None) -> int:
        what = f"cannot publish {key[0]}/{key[1]}"
        deadline = time.monotonic() + self.write_timeout
        for _ in range(_PUBLISH_ATTEMPTS):
            self._await_connection(deadline, what)
            try:
                with _errors(what):
                    tx, revision = self._publish_tx(key, content, md5, expected)
            except StoreUnavailable:
                continue  # lost the connection before committing: wait for it and retry
            try:
                results = tx.commit_async().get(timeout=self.op_timeout)
            except _UNREACHABLE:
                # The commit may or may not have been applied: look before retrying.
                if self._applied(key, revision, md5, deadline):
                    return revision
                continue
            failure = _first_failure(results)
            if failure is None:
                return revision
            if not isinstance(failure, BadVersionError | NodeExistsError | NoNodeError):
                with _errors(what):
                    raise failure  # NoAuth and the like: the multi-op was refused, not raced
            if expected is not None:  # another writer moved the key: report it against expected
                with _errors(what):
                    _check_cas(key, expected, self._read_revision(key)[0])
            log.debug("publish of %s/%s raced another writer; retrying", *key)
        raise StoreUnavailable(f"{what}: no success after {_PUBLISH_ATTEMPTS} attempts")

    def _publish_tx(
        self, key: Key, content: bytes, md5: str, expected: int | None
    ) -> tuple[Any, int]:
        """One multi-op: new content (CAS on the node version), the history entry, pruning."""
        self._ensure(config_group_path(key[0]))
        self._ensure(history_path(*key))
        current, stat = self._read_revision(key)
        _check_cas(key, expected, current)
        revisions = self._history_revisions(key)
        revision = max(current or 0, revisions[-1] if revisions else 0) + 1
        now = time.time()
        doc = _envelope.encode(revision, md5, now, content)
        current_doc = doc
        if len(content) > _INLINE_LIMIT:
            current_doc = _envelope.encode(revision, md5, now, content, ref=True)
        tx = self._zk.transaction()
        if stat is None:
            tx.create(config_path(*key), current_doc, acl=self._acl)
        else:
            tx.set_data(config_path(*key), current_doc, version=stat.version)
        tx.create(f"{history_path(*key)}/{history_node(revision)}", doc, acl=self._acl)
        for old in revisions[: max(0, len(revisions) + 1 - self.history_keep)]:
            tx.delete(f"{history_path(*key)}/{history_node(old)}")
        return tx, revision

    def _applied(self, key: Key, revision: int, md5: str, deadline: float) -> bool:
        """Whether a commit whose answer was lost took effect (its history entry is there).

        Raises:
            StoreUnavailable: ZooKeeper did not come back in time; the outcome is unknown.
        """
        what = f"publish of {key[0]}/{key[1]} has an unknown outcome"
        for _ in range(_PUBLISH_ATTEMPTS):
            self._await_connection(max(deadline, time.monotonic() + self.write_timeout), what)
            try:
                with _errors(what):
                    data, _ = self._get(f"{history_path(*key)}/{history_node(revision)}")
            except NotFound:
                return False
            except StoreUnavailable:
                continue
            return self._decode(key, data).md5 == md5
        raise StoreUnavailable(what)

    def remove(self, key: Key, expected: int | None) -> None:
        what = f"cannot remove {key[0]}/{key[1]}"
        self._require_connection(what)
        with _errors(what):
            current, stat = self._read_revision(key)
            if current is None:
                raise NotFound(f"{key[0]}/{key[1]} does not exist")
            _check_cas(key, expected, current)
            try:
                self._zk.delete_async(config_path(*key), version=stat.version).get(
                    timeout=self.op_timeout
                )
            except _UNREACHABLE:
                self._require_connection(what)
                if self._read_revision(key)[0] is not None:
                    raise
            except BadVersionError:
                _check_cas(key, expected, self._read_revision(key)[0])
                raise

    def history(self, key: Key, limit: int) -> list[ConfigItem]:
        with _errors(f"cannot read history of {key[0]}/{key[1]}"):
            if not self._connected.is_set():
                raise StoreUnavailable(f"ZooKeeper {self.url} is not connected")
            revisions = self._history_revisions(key)[::-1][:limit]
            pending = [
                self._zk.get_async(f"{history_path(*key)}/{history_node(r)}") for r in revisions
            ]
            items = []
            for result in pending:
                try:
                    data, _ = result.get(timeout=self.op_timeout)
                except NoNodeError:
                    continue  # pruned meanwhile
                items.append(self._decode(key, data))
            return items

    def keys(self, group: str) -> list[str]:
        with _errors(f"cannot list group {group}"):
            if not self._connected.is_set():
                raise StoreUnavailable(f"ZooKeeper {self.url} is not connected")
            try:
                return self._children(config_group_path(group))
            except NoNodeError:
                return []

    def watch_key(self, key: Key) -> None:
        with self._mutex:
            self._key_watch[key] = functools.partial(self._on_key_event, key)
        self._read_key(key)

    def unwatch_key(self, key: Key) -> None:
        with self._mutex:
            self._key_watch.pop(key, None)

    # ---------------------------------------------------------------------------- instances

    def _read_instances(
        self, service: str, watch: Callable[[Any], None] | None
    ) -> list[Instance] | None:
        """Children and their data, pipelined; None when the parent does not exist."""
        path = instances_path(service)
        try:
            names = self._children(path, watch)
        except NoNodeError:
            if watch is not None and self._zk.exists_async(path, watch=watch).get(
                timeout=self.op_timeout
            ):
                return self._read_instances(service, watch)
            return None
        pending = [(n, self._zk.get_async(f"{path}/{n}")) for n in names]
        found = []
        for name, result in pending:
            try:
                data, _ = result.get(timeout=self.op_timeout)
                found.append(parse_instance(service, name, data))
            except NoNodeError:
                continue
            except ConfigStoreError as exc:
                log.warning("%s", exc)
        return found

    def instances(self, service: str) -> list[Instance]:
        if not self._connected.is_set():
            raise StoreUnavailable(f"ZooKeeper {self.url} is not connected")
        with _errors(f"cannot list instances of {service}"):
            return sorted(self._read_instances(service, None) or [], key=lambda i: i.id)

    def watch_service(self, service: str) -> None:
        with self._mutex:
            self._svc_watch[service] = functools.partial(
                self._on_watch, self._dirty_services, service
            )
        self._mark(self._dirty_services, service)

    def unwatch_service(self, service: str) -> None:
        with self._mutex:
            self._svc_watch.pop(service, None)
            self._delivered.pop(service, None)

    def register(self, instance: Instance, document: bytes) -> None:
        reg = _Ephemeral(instance, document)
        with self._mutex:
            self._regs[reg.path] = reg
        if self._connected.is_set():
            try:
                with _errors(f"cannot register {instance.service}/{instance.id}"):
                    self._ensure_ephemeral(reg)
            except (PermissionDenied, Conflict):
                with self._mutex:
                    self._regs.pop(reg.path, None)
                raise
            except StoreUnavailable as exc:
                log.warning("%s; retrying when ZooKeeper is back", exc)
                self._mark(self._dirty_regs, reg.path)
        else:
            log.warning(
                "ZooKeeper unreachable; %s/%s registers when it returns",
                instance.service,
                instance.id,
            )
            self._mark(self._dirty_regs, reg.path)

    def _ensure_ephemeral(self, reg: _Ephemeral) -> None:
        """Create our node, or take it over from a previous session (Curator's delete + create)."""
        self._ensure(instances_path(reg.instance.service))
        for _ in range(5):
            if reg.closed:
                return
            try:
                self._zk.create_async(reg.path, reg.document, acl=self._acl, ephemeral=True).get(
                    timeout=self.op_timeout
                )
            except NodeExistsError:
                try:
                    data, stat = self._get(reg.path)
                except NoNodeError:
                    continue
                if stat.ephemeralOwner == self.session_id:
                    if data != reg.document:
                        self._zk.set_async(reg.path, reg.document, version=stat.version).get(
                            timeout=self.op_timeout
                        )
                else:
                    with contextlib.suppress(NoNodeError, BadVersionError):
                        self._zk.delete_async(reg.path, version=stat.version).get(
                            timeout=self.op_timeout
                        )
                    continue
            watch = functools.partial(self._on_watch, self._dirty_regs, reg.path)
            if self._zk.exists_async(reg.path, watch=watch).get(timeout=self.op_timeout) is None:
                continue  # deleted between create and watch: go round again
            return
        raise Conflict(f"{reg.path} keeps being taken by another session")

    def deregister(self, instance: Instance) -> None:
        path = _instance_path(instance)
        with self._mutex:
            reg = self._regs.pop(path, None)
        if reg is not None:
            reg.closed = True
        if self.closed or not self._connected.is_set():
            return  # closing the session removes it; otherwise it dies with the session
        try:
            with _errors(f"cannot deregister {path}"):
                _, stat = self._get(path)
                if stat.ephemeralOwner == self.session_id:
                    self._zk.delete_async(path, version=stat.version).get(timeout=self.op_timeout)
        except NotFound:
            pass
        except ConfigStoreError as exc:
            log.warning("%s", exc)

    # ------------------------------------------------------------------------------- worker

    def _mark(self, dirty: set[Any], item: Any) -> None:
        """Called from kazoo's watch thread: record and wake, nothing else."""
        with self._mutex:
            dirty.add(item)
        self._wake.set()

    def _on_watch(self, dirty: set[Any], item: Any, event: Any) -> None:
        """kazoo's watch thread: the watched node changed; re-read it on the worker."""
        self._mark(dirty, item)

    def _take(self, dirty: set[Any]) -> list[Any]:
        with self._mutex:
            items = list(dirty)
            dirty.clear()
            return items

    def _run(self) -> None:
        next_reconcile = time.monotonic() + self.reconcile_interval
        while not self.closed:
            self._wake.wait(1.0)
            self._wake.clear()
            if self.closed:
                return
            if not self._connected.is_set():
                continue
            now = time.monotonic()
            if self._reconnected or now >= next_reconcile:
                self._reconnected = False
                next_reconcile = now + self.reconcile_interval
                with self._mutex:
                    self._dirty_keys.update(self._key_watch)
                    self._dirty_services.update(self._svc_watch)
                    self._dirty_regs.update(self._regs)
            try:
                self._refresh_registrations(self._take(self._dirty_regs))
                self._refresh_keys(self._take(self._dirty_keys))
                self._refresh_services(self._take(self._dirty_services))
            except Exception:
                log.exception("config store worker failed; retrying")
                time.sleep(0.2)
                self._wake.set()

    def _retry_later(self, dirty: set[Any], items: list[Any]) -> None:
        with self._mutex:
            dirty.update(items)
        if self._connected.is_set():
            time.sleep(0.05)
            self._wake.set()

    # Key reads: a watch event issues the read at once (no hop through our worker); the answer is
    # handled on kazoo's single completion thread. ZooKeeper answers a session in order and that
    # thread runs completions in order, so values reach listeners in the order they were read.

    def _on_key_event(self, key: Key, event: Any) -> None:
        """kazoo's watch thread: the key changed (or the connection was reset)."""
        self._read_key(key)

    def _read_key(self, key: Key) -> None:
        """Issue a watched read of ``key``; never blocks."""
        with self._mutex:
            watch = self._key_watch.get(key)
        if watch is None or self.closed:
            return
        try:
            result = self._zk.get_async(config_path(*key), watch=watch)
        except Exception:  # closed under us
            return
        result.rawlink(functools.partial(self._on_key_read, key, watch))

    def _on_key_read(self, key: Key, watch: Callable[[Any], None], result: Any) -> None:
        """kazoo's completion thread: apply what was read."""
        try:
            data, _ = result.get_nowait()
            item: ConfigItem | None = self._decode(key, data)
        except NoNodeError:
            # Absent (or a referenced history entry vanished): watch for its creation.
            exists = self._zk.exists_async(config_path(*key), watch=watch)
            exists.rawlink(functools.partial(self._on_key_exists, key))
            return
        except _UNREACHABLE:
            self._mark(self._dirty_keys, key)  # re-read by the worker once reconnected
            return
        except Exception as exc:
            log.error("cannot read %s/%s: %s", *key, exc)
            return
        self._report_config(key, item)

    def _on_key_exists(self, key: Key, result: Any) -> None:
        try:
            stat = result.get_nowait()
        except _UNREACHABLE:
            self._mark(self._dirty_keys, key)
            return
        except Exception as exc:
            log.error("cannot watch %s/%s: %s", *key, exc)
            return
        if stat is None:
            self._report_config(key, None)
        else:
            self._read_key(key)  # created between the two reads

    def _refresh_keys(self, keys: list[Key]) -> None:
        for key in keys:
            self._read_key(key)

    def _refresh_services(self, services: list[str]) -> None:
        failed: list[str] = []
        for service in services:
            with self._mutex:
                watch = self._svc_watch.get(service)
            if watch is None:
                continue
            try:
                found = self._read_instances(service, watch) or []
            except _UNREACHABLE:
                failed.append(service)
                continue
            with self._mutex:
                before = self._delivered.get(service)
            if not found and before and service not in self._confirm_empty:
                self._confirm_empty.add(service)  # empty-list protection: confirm with a re-read
                failed.append(service)
                continue
            self._confirm_empty.discard(service)
            with self._mutex:
                if service not in self._svc_watch:
                    continue  # unwatched meanwhile
                self._delivered[service] = found
            if self._sink is not None:
                self._sink.instances_changed(service, found)
        if failed:
            self._retry_later(self._dirty_services, failed)

    def _report_config(self, key: Key, item: ConfigItem | None) -> None:
        if self._sink is not None:
            self._sink.config_changed(key, item)

    def _refresh_registrations(self, paths: list[str]) -> None:
        failed: list[str] = []
        for path in paths:
            with self._mutex:
                reg = self._regs.get(path)
            if reg is None or reg.closed:
                continue
            try:
                with _errors(f"cannot re-register {path}"):
                    self._ensure_ephemeral(reg)
            except StoreUnavailable:
                failed.append(path)
            except ConfigStoreError as exc:
                log.error("%s", exc)
                failed.append(path)
        if failed:
            self._retry_later(self._dirty_regs, failed)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._log.closing = True
        self._wake.set()
        with contextlib.suppress(Exception):
            self._zk.stop()
        with contextlib.suppress(Exception):
            self._zk.close()
        if self._worker.ident is not None:
            self._worker.join(timeout=5)


def _acl_for(url: StoreUrl) -> list[Any]:
    if not url.username:
        return list(OPEN_ACL_UNSAFE)
    acl = [make_digest_acl(url.username, url.password or "", all=True)]
    reader = url.options.get("reader")
    if reader:
        user, _, password = reader.partition(":")
        acl.append(make_digest_acl(user, password, read=True))
    else:
        acl.append(make_acl("world", "anyone", read=True))
    return acl


def _first_failure(results: list[Any]) -> Exception | None:
    """The error that failed a multi-op (kazoo returns errors in the result list, with
    RolledBackError for the operations undone because of it)."""
    errors = [r for r in results if isinstance(r, Exception)]
    causes = [e for e in errors if not isinstance(e, RolledBackError | RuntimeInconsistency)]
    return (causes or errors)[0] if errors else None
