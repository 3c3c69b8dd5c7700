"""The store's contract, run against both backends (SQLite and a real ZooKeeper)."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from config_store import (
    MAX_CONTENT_BYTES,
    ConfigItem,
    ConfigStore,
    Conflict,
    ContentTooLarge,
    InvalidKey,
    NotFound,
    PermissionDenied,
    StoreClosed,
)

from .conftest import Recorder, StoreFactory, at_revision, ids


def test_publish_then_get_returns_content_revision_and_md5(store: ConfigStore) -> None:
    assert store.get("intent-cls") is None
    assert store.publish("intent-cls", b'{"routes": []}') == 1
    assert store.publish("intent-cls", '{"routes": [1]}') == 2
    item = store.get("intent-cls")
    assert item is not None
    assert (item.data_id, item.group, item.revision, item.source) == (
        "intent-cls",
        "models",
        2,
        "store",
    )
    assert item.content == b'{"routes": [1]}' and item.json() == {"routes": [1]}
    assert item.md5 == hashlib.md5(b'{"routes": [1]}').hexdigest()
    assert not item.stale and item.modified.tzinfo is not None


def test_groups_are_separate_namespaces(store: ConfigStore) -> None:
    store.publish("a", b"1", group="models")
    store.publish("a", b"2", group="other")
    assert store.get("a", group="models").content == b"1"  # type: ignore[union-attr]
    assert store.get("a", group="other").content == b"2"  # type: ignore[union-attr]
    assert (
        store.keys("models") == ["a"] and store.keys("other") == ["a"] and store.keys("none") == []
    )


def test_a_second_client_sees_what_the_first_published(factory: StoreFactory) -> None:
    a, b = factory(), factory()
    rev = a.publish("m", b"x")
    item = b.get("m")
    assert item is not None and item.revision == rev and item.content == b"x"


def test_compare_and_swap(store: ConfigStore) -> None:
    assert store.publish("m", b"v1", expected_revision=0) == 1
    with pytest.raises(Conflict) as exc:
        store.publish("m", b"again", expected_revision=0)
    assert exc.value.actual == 1 and "already exists" in str(exc.value)
    assert store.publish("m", b"v2", expected_revision=1) == 2
    with pytest.raises(Conflict) as exc:
        store.publish("m", b"stale", expected_revision=1)
    assert (exc.value.expected, exc.value.actual) == (1, 2)
    with pytest.raises(Conflict):
        store.publish("missing", b"x", expected_revision=3)
    assert store.get("m").content == b"v2"  # type: ignore[union-attr]
    assert store.get("missing") is None


def test_concurrent_read_modify_write_loses_no_update(factory: StoreFactory) -> None:
    stores = [factory(), factory()]
    stores[0].publish("counter", b"0")
    per_thread, threads = 8, 4
    errors: list[BaseException] = []

    def bump(store: ConfigStore) -> None:
        try:
            for _ in range(per_thread):
                while True:
                    item = store.get("counter")
                    assert item is not None
                    try:
                        store.publish(
                            "counter", str(int(item.text()) + 1), expected_revision=item.revision
                        )
                        break
                    except Conflict:
                        continue
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=bump, args=(stores[i % 2],)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert not errors
    final = stores[1].get("counter")
    assert final is not None
    assert int(final.text()) == per_thread * threads
    assert final.revision == per_thread * threads + 1


def test_remove_keeps_history_and_revisions_keep_increasing(store: ConfigStore) -> None:
    with pytest.raises(NotFound):
        store.remove("m")
    store.publish("m", b"a")
    store.publish("m", b"b")
    with pytest.raises(Conflict):
        store.remove("m", expected_revision=1)
    assert store.get("m").revision == 2  # type: ignore[union-attr]
    store.remove("m", expected_revision=2)
    assert store.get("m") is None
    assert store.keys() == []
    assert [i.revision for i in store.history("m")] == [2, 1]
    assert store.publish("m", b"c") == 3


def test_history_is_newest_first_bounded_and_limited(factory: StoreFactory) -> None:
    store = factory(history_keep=5)
    for i in range(8):
        store.publish("m", f"v{i}")
    hist = store.history("m", limit=20)
    assert [h.revision for h in hist] == [8, 7, 6, 5, 4]
    assert [h.text() for h in hist] == ["v7", "v6", "v5", "v4", "v3"]
    assert [h.revision for h in store.history("m", limit=2)] == [8, 7]
    assert store.history("never") == []


def test_listener_gets_current_value_then_changes_from_another_client(
    factory: StoreFactory, recorder: Recorder
) -> None:
    writer, reader = factory(), factory()
    writer.publish("m", b"one")
    listener = reader.add_listener("m", recorder)
    witness = Recorder()  # a second listener of the reader: it shows when revision 3 arrived
    reader.add_listener("m", witness)
    recorder.wait_for(at_revision(1))
    writer.publish("m", b"two")
    values = recorder.wait_for(at_revision(2))
    assert values[-1].content == b"two"
    listener.cancel()
    writer.publish("m", b"three")
    witness.wait_for(at_revision(3))  # the reader has handed revision 3 to its listeners
    assert recorder.revisions()[-1] == 2


def test_listener_on_missing_key_sees_none_then_creation_then_removal(
    factory: StoreFactory, recorder: Recorder
) -> None:
    writer, reader = factory(), factory()
    reader.add_listener("later", recorder)
    recorder.wait_for(lambda vs: vs == [None])
    writer.publish("later", b"now")
    recorder.wait_for(at_revision(1))
    writer.remove("later")
    recorder.wait_for(lambda vs: vs[-1] is None and len(vs) == 3)
    writer.publish("later", b"back")
    assert recorder.wait_for(at_revision(2))[-1].content == b"back"


def test_listeners_converge_with_strictly_increasing_revisions(
    factory: StoreFactory,
) -> None:
    writer = factory()
    readers = [factory() for _ in range(3)]
    recorders = [Recorder() for _ in readers]
    for reader, rec in zip(readers, recorders, strict=True):
        reader.add_listener("hot", rec)
    for rec in recorders:
        rec.wait_for(lambda vs: vs == [None])
    last = 0
    for i in range(40):
        last = writer.publish("hot", f"v{i}")
    for rec in recorders:
        rec.wait_for(at_revision(last))
        revs = [r for r in rec.revisions() if r is not None]
        assert revs == sorted(set(revs)), revs
        assert rec.last().text() == "v39"


def test_slow_or_failing_callback_does_not_hold_up_other_listeners(
    factory: StoreFactory, recorder: Recorder
) -> None:
    writer, reader = factory(), factory()
    gate = threading.Event()
    failures = Recorder()

    def slow(item: ConfigItem | None) -> None:
        gate.wait(10)

    def failing(item: ConfigItem | None) -> None:
        failures(item)
        raise RuntimeError("user callback bug")

    reader.add_listener("k", slow)
    reader.add_listener("k", failing)
    reader.add_listener("other", recorder)
    writer.publish("k", b"1")
    writer.publish("other", b"1")
    recorder.wait_for(at_revision(1))
    writer.publish("k", b"2")
    failures.wait_for(at_revision(2))  # a raising callback keeps receiving
    gate.set()


def test_register_watch_and_deregister_instances(factory: StoreFactory, recorder: Recorder) -> None:
    server, client = factory(), factory()
    client.watch_instances("intent-cls-3", recorder)
    reg = server.register("intent-cls-3", "127.0.0.1", 9001, {"model": "intent-cls", "weight": 10})
    got = recorder.wait_for(lambda vs: bool(vs) and ids(vs[-1]) == ["127.0.0.1:9001"])[-1]
    inst = got[0]
    assert (inst.host, inst.port, inst.status) == ("127.0.0.1", 9001, "ALIVE")
    assert inst.payload == {"model": "intent-cls", "weight": 10}
    server.register("intent-cls-3", "127.0.0.1", 9002)
    recorder.wait_for(lambda vs: ids(vs[-1]) == ["127.0.0.1:9001", "127.0.0.1:9002"])
    assert ids(client.instances("intent-cls-3")) == ["127.0.0.1:9001", "127.0.0.1:9002"]
    reg.close()
    recorder.wait_for(lambda vs: ids(vs[-1]) == ["127.0.0.1:9002"])
    server.close()
    recorder.wait_for(lambda vs: vs[-1] == [])
    assert client.instances("intent-cls-3") == []


def test_registration_document_is_a_serverset(factory: StoreFactory) -> None:
    server = factory()
    reg = server.register("svc", "127.0.0.1", 8000, {"version": "3", "shard": 0})
    doc = json.loads(reg.document)
    assert doc["serviceEndpoint"] == {"host": "127.0.0.1", "port": 8000}
    assert doc["status"] == "ALIVE" and doc["additionalEndpoints"] == {}
    assert doc["version"] == "3" and doc["shard"] == 0


@pytest.mark.parametrize(
    ("service", "host", "port", "payload", "message"),
    [
        ("svc", "127.0.0.1", 0, None, "port"),
        ("svc", "127.0.0.1", 70000, None, "port"),
        ("svc", "bad host!", 80, None, "host"),
        ("a/b", "127.0.0.1", 80, None, "separator"),
        ("svc", "127.0.0.1", 80, {"status": "DEAD"}, "reserved"),
        ("svc", "127.0.0.1", 80, {"obj": object()}, "JSON"),
    ],
)
def test_bad_registrations_are_refused(
    store: ConfigStore,
    service: str,
    host: str,
    port: int,
    payload: dict[str, object] | None,
    message: str,
) -> None:
    with pytest.raises(InvalidKey, match=message):
        store.register(service, host, port, payload)


@pytest.mark.parametrize(
    ("data_id", "message"),
    [
        ("", "empty"),
        ("..", "relative"),
        (".", "relative"),
        ("a/b", "separator"),
        ("a\\b", "separator"),
        ("../etc/passwd", "separator"),
        ("bad\x00id", r"U\+0000"),
        ("tab\tid", r"U\+0009"),
        ("space id", "SPACE"),
        ("x" * 201, "at most 200"),
        (b"\xff\xfe", "not valid UTF-8"),
        ("surrogate\udcff", "not valid UTF-8"),
        (42, "must be a string"),
    ],
)
def test_bad_ids_are_refused_and_nothing_is_written(
    store: ConfigStore, data_id: object, message: str
) -> None:
    with pytest.raises(InvalidKey, match=message):
        store.publish(data_id, b"x")  # type: ignore[arg-type]
    with pytest.raises(InvalidKey):
        store.get(data_id)  # type: ignore[arg-type]
    with pytest.raises(InvalidKey):
        store.publish("ok", b"x", group=data_id)  # type: ignore[arg-type]
    assert store.keys() == []


def test_unicode_ids_are_fine(store: ConfigStore) -> None:
    store.publish("意图分类-v2.1", b"x")
    assert store.get("意图分类-v2.1") is not None
    assert store.publish(b"bytes-id", b"y") == 1  # type: ignore[arg-type]


def test_oversized_or_mistyped_content_is_refused_before_writing(store: ConfigStore) -> None:
    store.publish("m", b"small")
    with pytest.raises(ContentTooLarge) as exc:
        store.publish("m", b"x" * (MAX_CONTENT_BYTES + 1))
    assert exc.value.size == MAX_CONTENT_BYTES + 1 and exc.value.limit == MAX_CONTENT_BYTES
    big = bytes(range(256)) * (MAX_CONTENT_BYTES // 256)
    assert store.publish("big", big) == 1
    assert store.publish("big", big[::-1]) == 2
    assert store.get("big").content == big[::-1]  # type: ignore[union-attr]
    assert [h.content == c for h, c in zip(store.history("big"), [big[::-1], big], strict=True)]
    with pytest.raises(TypeError, match="bytes or str"):
        store.publish("m", 12)  # type: ignore[arg-type]
    with pytest.raises(InvalidKey, match="expected_revision"):
        store.publish("m", b"x", expected_revision=-1)
    with pytest.raises(InvalidKey, match="limit"):
        store.history("m", limit=0)
    assert store.get("m").content == b"small"  # type: ignore[union-attr]


def test_failover_file_overrides_store_for_get_and_listeners(
    factory: StoreFactory, tmp_path: Path, recorder: Recorder
) -> None:
    failover = tmp_path / "failover"
    snapshots = tmp_path / "reader-snapshots"
    writer = factory()
    reader = factory(failover_dir=failover, snapshot_dir=snapshots)
    writer.publish("m", b"from-store")
    reader.add_listener("m", recorder)
    recorder.wait_for(at_revision(1))
    (failover / "models").mkdir(parents=True)
    (failover / "models" / "m").write_bytes(b"from-operator")
    got = recorder.wait_for(lambda vs: vs[-1].source == "failover")
    assert got[-1].content == b"from-operator"
    item = reader.get("m")
    assert item is not None and item.source == "failover" and item.content == b"from-operator"
    writer.publish("m", b"while-overridden")
    # the reader snapshots a store value after handing it to its listeners: once revision 2 is
    # in its snapshot, the listener has had its chance to (wrongly) get it
    deadline = time.monotonic() + 10
    while not _snapshot_file(snapshots, "m").read_bytes().endswith(b"while-overridden"):
        assert time.monotonic() < deadline, "the reader never snapshotted revision 2"
        time.sleep(0.02)
    assert recorder.last().source == "failover"
    (failover / "models" / "m").unlink()
    got = recorder.wait_for(lambda vs: vs[-1].source == "store")
    assert got[-1].content == b"while-overridden" and got[-1].revision == 2


def _snapshot_file(root: Path, name: str, timeout: float = 5.0) -> Path:
    """Snapshots are written off the caller's thread: wait for the file."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = [p for p in root.rglob(name) if p.is_file()]
        if files:
            assert len(files) == 1
            return files[0]
        time.sleep(0.02)
    raise AssertionError(f"no snapshot of {name} under {root}")


def test_items_read_or_pushed_are_snapshotted(factory: StoreFactory, tmp_path: Path) -> None:
    snap = tmp_path / "snap-check"
    writer = factory()
    reader = factory(snapshot_dir=snap)
    writer.publish("m", b"v1")
    assert reader.get("m") is not None
    assert _snapshot_file(snap, "m").read_bytes().endswith(b"v1")
    rec = Recorder()
    reader.add_listener("pushed", rec)
    writer.publish("pushed", b"p1")
    rec.wait_for(at_revision(1))
    assert _snapshot_file(snap, "pushed").read_bytes().endswith(b"p1")
    writer.remove("pushed")
    rec.wait_for(lambda vs: vs[-1] is None)
    deadline = time.monotonic() + 5
    while [p for p in snap.rglob("pushed") if p.is_file()] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not [p for p in snap.rglob("pushed") if p.is_file()], "a removed key leaves no snapshot"


def test_closed_store_refuses_calls(factory: StoreFactory) -> None:
    store = factory()
    store.close()
    store.close()
    assert store.state == "closed"
    with pytest.raises(StoreClosed):
        store.publish("m", b"x")
    with pytest.raises(StoreClosed):
        store.get("m")


def _read_only_urls(factory: StoreFactory) -> tuple[str, str, str]:
    """(writer URL, read-only URL, anonymous URL) for the factory's backend."""
    if factory.backend == "sqlite":
        return factory.url, factory.url + "&mode=ro", factory.url + "&mode=ro"
    hosts_and_chroot = factory.url.removeprefix("zk://").split("?")[0]
    return (
        f"zk://autoai:w-secret@{hosts_and_chroot}?reader=sdk:r-secret",
        f"zk://sdk:r-secret@{hosts_and_chroot}",
        f"zk://{hosts_and_chroot}",
    )


def test_read_only_client_reads_and_listens_but_cannot_write(
    factory: StoreFactory, recorder: Recorder
) -> None:
    writer_url, reader_url, _ = _read_only_urls(factory)
    writer = factory(url=writer_url)
    writer.publish("m", b"v1")
    writer.register("svc", "127.0.0.1", 9000)
    reader = factory(url=reader_url)
    assert reader.get("m").content == b"v1"  # type: ignore[union-attr]
    assert ids(reader.instances("svc")) == ["127.0.0.1:9000"]
    reader.add_listener("m", recorder)
    writer.publish("m", b"v2")
    recorder.wait_for(at_revision(2))
    with pytest.raises(PermissionDenied):
        reader.publish("m", b"forged")
    with pytest.raises(PermissionDenied):
        reader.remove("m")
    with pytest.raises(PermissionDenied):
        reader.register("svc", "127.0.0.1", 9666)
    assert writer.get("m").content == b"v2"  # type: ignore[union-attr]
    assert ids(writer.instances("svc")) == ["127.0.0.1:9000"]


_REGISTER_AND_HANG = """
import sys, time
import config_store
store = config_store.open_store(sys.argv[1], snapshot_dir=False, failover_dir=False)
store.register("doomed", "127.0.0.1", 9100, {"pid": 1})
print("registered", flush=True)
time.sleep(120)
"""


def test_registration_of_a_killed_process_expires(
    factory: StoreFactory, recorder: Recorder
) -> None:
    watcher = factory()
    watcher.watch_instances("doomed", recorder)
    proc = subprocess.Popen(
        [sys.executable, "-c", _REGISTER_AND_HANG, factory.url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "registered"
        recorder.wait_for(lambda vs: bool(vs) and ids(vs[-1]) == ["127.0.0.1:9100"])
        killed = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # SQLite lease_ttl=2 s, ZooKeeper session_timeout=4 s (see conftest): gone soon after.
        recorder.wait_for(lambda vs: vs[-1] == [], timeout=15)
        assert time.monotonic() - killed < 4 + 3
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
