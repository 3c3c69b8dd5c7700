"""The ``Backend`` protocol driven directly, on both backends: what a backend reports to its sink,
from which thread, and when it stops. (The store's behaviour over it is ``test_contract.py``.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from config_store import ConfigItem, Instance
from config_store._backend import Backend, Key
from config_store._envelope import content_md5
from config_store._url import parse_url

from .conftest import StoreFactory, ids

Event = tuple[str, object, object, int]  # (kind, key or service, value, reporting thread)


class SinkRecorder:
    """A ``Sink`` that records every report and the thread it came from."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._cond = threading.Condition()

    def config_changed(self, key: Key, item: ConfigItem | None) -> None:
        self._record(("config", key, item, threading.get_ident()))

    def instances_changed(self, service: str, instances: list[Instance]) -> None:
        self._record(("instances", service, instances, threading.get_ident()))

    def _record(self, event: Event) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Event]], bool], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.events):
                left = deadline - time.monotonic()
                assert left > 0, f"condition not met in {timeout}s; got {self.events!r}"
                self._cond.wait(left)

    def of(self, what: object) -> list[object]:
        with self._cond:
            return [value for _, name, value, _ in self.events if name == what]


def _revision(value: object) -> int | None:
    return value.revision if isinstance(value, ConfigItem) else None


@pytest.fixture
def backends(factory: StoreFactory) -> Iterator[Callable[[], tuple[Backend, SinkRecorder]]]:
    """Started backends of the factory's store, each with its own recording sink."""
    started: list[Backend] = []

    def make() -> tuple[Backend, SinkRecorder]:
        url = parse_url(factory.url)
        backend: Backend
        if factory.backend == "zk":
            from config_store._zk import ZkBackend

            backend = ZkBackend(url)
        else:
            from config_store._sqlite import SqliteBackend

            backend = SqliteBackend(url)
        sink = SinkRecorder()
        backend.start(sink)
        started.append(backend)
        return backend, sink

    yield make
    for backend in started:
        backend.close()


def _publish(backend: Backend, key: Key, content: bytes) -> int:
    return backend.publish(key, content, content_md5(content), None)


def test_a_watched_key_is_reported_then_every_change_off_the_callers_thread(
    backends: Callable[[], tuple[Backend, SinkRecorder]],
) -> None:
    backend, sink = backends()
    key = ("models", "m")
    backend.watch_key(key)
    sink.wait_for(lambda es: len(es) >= 1)
    assert sink.of(key)[0] is None
    for i in range(1, 4):
        assert _publish(backend, key, f"v{i}".encode()) == i
    sink.wait_for(lambda es: _revision(es[-1][2]) == 3)
    # A value may be reported twice (a re-read after connecting), never an older one after it.
    revisions = [_revision(v) or 0 for v in sink.of(key)]
    assert revisions == sorted(revisions)
    assert threading.get_ident() not in {thread for *_, thread in sink.events}


def test_an_unwatched_key_is_no_longer_reported(
    backends: Callable[[], tuple[Backend, SinkRecorder]],
) -> None:
    writer, _ = backends()
    reader, sink = backends()
    gone, kept = ("models", "gone"), ("models", "kept")
    reader.watch_key(gone)
    reader.watch_key(kept)
    sink.wait_for(lambda es: {name for _, name, _, _ in es} == {gone, kept})
    reader.unwatch_key(gone)
    _publish(writer, gone, b"unheard")
    _publish(writer, kept, b"heard")  # published after: reported after whatever ``gone`` got
    sink.wait_for(lambda es: any(n == kept and _revision(v) == 1 for _, n, v, _ in es))
    # a read issued before the unwatch may still report, but nothing written after it
    assert all(v is None for v in sink.of(gone))
    assert reader.read(gone) is not None  # the write itself did happen


def test_a_watched_service_is_reported_on_register_and_deregister(
    backends: Callable[[], tuple[Backend, SinkRecorder]],
) -> None:
    server, _ = backends()
    watcher, sink = backends()
    watcher.watch_service("svc")
    sink.wait_for(lambda es: len(es) >= 1)
    assert sink.of("svc")[0] == []
    instance = Instance("svc", "127.0.0.1:9000", "127.0.0.1", 9000, "ALIVE", {"model": "m"})
    document = b'{"serviceEndpoint":{"host":"127.0.0.1","port":9000},"status":"ALIVE"}'
    server.register(instance, document)
    sink.wait_for(lambda es: isinstance(es[-1][2], list) and ids(es[-1][2]) == [instance.id])
    assert ids(watcher.instances("svc")) == [instance.id]
    server.deregister(instance)
    sink.wait_for(lambda es: es[-1][2] == [])
    assert watcher.instances("svc") == []
    server.deregister(instance)  # twice: nothing to do, no error


def test_a_backend_serves_one_store(backends: Callable[[], tuple[Backend, SinkRecorder]]) -> None:
    backend, sink = backends()
    with pytest.raises(RuntimeError, match="started already"):
        backend.start(sink)


def test_close_is_idempotent_and_a_late_deregister_is_harmless(
    backends: Callable[[], tuple[Backend, SinkRecorder]],
) -> None:
    backend, _ = backends()
    instance = Instance("svc", "127.0.0.1:9001", "127.0.0.1", 9001)
    backend.register(instance, b'{"serviceEndpoint":{"host":"127.0.0.1","port":9001}}')
    backend.close()
    backend.close()
    assert backend.state == "closed"
    backend.deregister(instance)
