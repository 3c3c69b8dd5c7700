"""ZooKeeper-only behaviour under faults: session expiry, dropped connections, restarts, a whole
ensemble down, a leader killed mid-stream, ACLs. Real servers, real sessions."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest

from config_store import ConfigStore, Conflict, PermissionDenied, StoreUnavailable, open_store
from config_store.testing import (
    ZooKeeperEnsemble,
    ZooKeeperServer,
    drop_connection,
    expire_session,
    session_id,
)

from .conftest import Recorder, at_revision, ids

pytestmark = pytest.mark.zk


def _open(url: str, tmp_path: Path, name: str, **kwargs: object) -> ConfigStore:
    return open_store(url, snapshot_dir=tmp_path / f"snap-{name}", failover_dir=False, **kwargs)  # type: ignore[arg-type]


def test_session_expiry_recreates_the_ephemeral_within_a_second(
    zk_url: str, tmp_path: Path, recorder: Recorder
) -> None:
    server = _open(zk_url + "?session_timeout=4", tmp_path, "server")
    client = _open(zk_url, tmp_path, "client")
    try:
        server.register("svc", "127.0.0.1", 9000, {"model": "m"})
        client.watch_instances("svc", recorder)
        recorder.wait_for(lambda vs: bool(vs) and ids(vs[-1]) == ["127.0.0.1:9000"])
        old_session = session_id(server)
        expire_session(server)  # returns once the server store has its new session
        reconnected = time.monotonic()
        assert session_id(server) != old_session
        recorder.wait_for(lambda vs: len(vs) >= 3 and ids(vs[-1]) == ["127.0.0.1:9000"], timeout=5)
        assert time.monotonic() - reconnected <= 1.0
        # the watch on the service survived too, and so did the client's key listeners
        lst = Recorder()
        server.add_listener("m", lst)
        client.publish("m", b"after-expiry")
        lst.wait_for(at_revision(1))
    finally:
        server.close()
        client.close()


def test_dropped_connection_keeps_session_listeners_and_registration(
    zk_url: str, tmp_path: Path, recorder: Recorder
) -> None:
    store = _open(zk_url, tmp_path, "a")
    other = _open(zk_url, tmp_path, "b")
    try:
        store.register("svc", "127.0.0.1", 9000)
        store.add_listener("m", recorder)
        recorder.wait_for(lambda vs: vs == [None])
        session = session_id(store)
        drop_connection(store)
        assert session_id(store) == session
        other.publish("m", b"x")
        recorder.wait_for(at_revision(1))
        assert ids(other.instances("svc")) == ["127.0.0.1:9000"]
    finally:
        store.close()
        other.close()


def test_listeners_catch_up_after_a_server_restart(
    zk_own_server: ZooKeeperServer, tmp_path: Path, recorder: Recorder
) -> None:
    url = f"zk://{zk_own_server.address}/restart"
    writer = _open(url, tmp_path, "w")
    reader = _open(url, tmp_path, "r")
    try:
        writer.publish("m", b"v1")
        reader.add_listener("m", recorder)
        recorder.wait_for(at_revision(1))
        zk_own_server.stop()
        time.sleep(2)
        zk_own_server.start()
        assert writer.wait_connected(20) and reader.wait_connected(20)
        writer.publish("m", b"v2")
        writer.publish("m", b"v3")
        assert recorder.wait_for(at_revision(3))[-1].content == b"v3"
    finally:
        writer.close()
        reader.close()


def test_store_down_at_start_serves_the_snapshot_then_catches_up(
    zk_own_server: ZooKeeperServer, tmp_path: Path, recorder: Recorder
) -> None:
    url = f"zk://{zk_own_server.address}/cold"
    with _open(url, tmp_path, "w") as writer:
        writer.publish("routes", b"v1")
    with _open(url, tmp_path, "sdk") as sdk:
        assert sdk.get("routes") is not None  # leaves a snapshot behind
    zk_own_server.stop()
    cold = _open(url + "?connect_timeout=0.5", tmp_path, "sdk")
    try:
        assert cold.state == "connecting"
        item = cold.get("routes")
        assert item is not None and item.stale and item.content == b"v1"
        cold.add_listener("routes", recorder)
        assert recorder.wait_for(at_revision(1))[-1].stale
        with pytest.raises(StoreUnavailable):
            cold.get("never-seen")
        zk_own_server.start()
        assert cold.wait_connected(20)
        with _open(url, tmp_path, "w2") as writer:
            writer.publish("routes", b"v2")
        got = recorder.wait_for(at_revision(2))[-1]
        assert got.content == b"v2" and not got.stale
    finally:
        cold.close()


def test_anonymous_and_wrong_password_clients_are_refused(zk_url: str, tmp_path: Path) -> None:
    hosts_and_chroot = zk_url.removeprefix("zk://")
    with _open(f"zk://autoai:w@{hosts_and_chroot}?reader=sdk:r", tmp_path, "w") as writer:
        writer.publish("m", b"routes")
        for url in (f"zk://{hosts_and_chroot}", f"zk://sdk:wrong@{hosts_and_chroot}"):
            with _open(url, tmp_path, "x") as intruder:
                with pytest.raises(PermissionDenied):
                    intruder.get("m")
                with pytest.raises(PermissionDenied):
                    intruder.publish("m", b"forged")
        assert writer.get("m").content == b"routes"  # type: ignore[union-attr]


@pytest.mark.slow
def test_whole_ensemble_down_for_30s(
    zk_ensemble: ZooKeeperEnsemble, zk_chroot: str, tmp_path: Path, recorder: Recorder
) -> None:
    url = f"zk://{zk_ensemble.connect_string}{zk_chroot}?session_timeout=10"
    writer = _open(url + "&write_timeout=2", tmp_path, "w")
    reader = _open(url, tmp_path, "r")
    late: ConfigStore | None = None
    try:
        revisions = [writer.publish("routes", f"v{i}") for i in range(5)]
        writer.register("svc", "127.0.0.1", 9000)
        reader.add_listener("routes", recorder)
        recorder.wait_for(at_revision(5))
        assert reader.get("routes") is not None

        zk_ensemble.stop(kill=True)
        down_at = time.monotonic()
        item = reader.get("routes")
        assert item is not None and item.stale and item.content == b"v4"
        late = _open(url + "&connect_timeout=1", tmp_path, "r")  # same snapshot dir as reader
        late_rec = Recorder()
        late.add_listener("routes", late_rec)
        assert late_rec.wait_for(at_revision(5))[-1].stale
        failures = 0
        while time.monotonic() - down_at < 30:
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailable):
                writer.publish("routes", b"during-outage")
            assert time.monotonic() - t0 < 2 + 1.5
            failures += 1
            assert reader.get("routes").content == b"v4"  # type: ignore[union-attr]
        assert failures >= 5

        zk_ensemble.start()
        assert writer.wait_connected(30) and reader.wait_connected(30) and late.wait_connected(30)
        history = writer.history("routes", limit=100)
        assert [h.revision for h in history] == revisions[::-1]  # nothing lost, nothing extra
        assert writer.publish("routes", b"after") == 6
        recorder.wait_for(at_revision(6))
        late_rec.wait_for(at_revision(6))
        assert ids(reader.instances("svc")) == ["127.0.0.1:9000"]
    finally:
        writer.close()
        reader.close()
        if late is not None:
            late.close()


@pytest.mark.slow
def test_leader_killed_during_a_stream_of_cas_publishes(
    zk_ensemble: ZooKeeperEnsemble, zk_chroot: str, tmp_path: Path, recorder: Recorder
) -> None:
    url = f"zk://{zk_ensemble.connect_string}{zk_chroot}"
    # history_keep must hold every publish of the stream: at most about 70 a second, for the
    # counted phases below and the rejoining node's start (60 s at most)
    writer = _open(url + "?write_timeout=10", tmp_path, "w", history_keep=5000)
    reader = _open(url, tmp_path, "r")
    acked: dict[int, str] = {}
    errors: list[BaseException] = []
    unexpected: list[BaseException] = []
    stop = threading.Event()

    def stream() -> None:
        revision = 0
        i = 0
        while not stop.is_set():
            content = f"payload-{i}-" + "x" * (i % 50)
            try:
                revision = writer.publish("routes", content, expected_revision=revision)
                acked[revision] = hashlib.md5(content.encode()).hexdigest()
            except (StoreUnavailable, Conflict) as exc:
                # allowed: not acknowledged. A commit whose answer was lost may have applied,
                # so the next expected revision is read again (and may itself be unreachable,
                # or stale from the cache: then the next publish is a Conflict, and so on).
                errors.append(exc)
                try:
                    item = writer.get("routes")
                    revision = 0 if item is None else item.revision
                except StoreUnavailable as again:
                    errors.append(again)
            except BaseException as exc:  # the stream must not die silently mid-phase
                unexpected.append(exc)
                return
            i += 1
            time.sleep(0.01)

    def acknowledged(what: str, more: int = 50) -> None:
        """Wait, bounded, for ``more`` acknowledged publishes: counts, not seconds, so that each
        phase sees a stream however loaded the machine is."""
        target = len(acked) + more
        deadline = time.monotonic() + 60
        while len(acked) < target:
            assert not unexpected, f"the publishing stream died: {unexpected!r}"
            assert time.monotonic() < deadline, f"not {more} publishes {what} in 60 s"
            time.sleep(0.05)

    try:
        reader.add_listener("routes", recorder)
        thread = threading.Thread(target=stream)
        thread.start()
        try:
            acknowledged("before the kill")
            leader = zk_ensemble.leader()
            leader.stop(kill=True)
            acknowledged("while the leader was down")
            leader.start()
            acknowledged("after it rejoined")
        finally:
            stop.set()
            thread.join(30)
        assert not unexpected, unexpected
        assert len(acked) > 20
        history = {h.revision: h.md5 for h in writer.history("routes", limit=5000)}
        missing = [r for r in acked if r not in history]
        assert not missing, f"acknowledged revisions lost: {missing}"
        assert all(history[r] == md5 for r, md5 in acked.items()), "torn or replaced content"
        last = max(acked)
        assert recorder.wait_for(at_revision(last), timeout=15)[-1].md5 == acked[last]
        revs = [r for r in recorder.revisions() if r is not None]
        assert revs == sorted(set(revs))
    finally:
        # closed whatever failed: a kazoo client left running keeps drawing from `random`
        # (ping jitter), which hypothesis then reports in every later property test
        writer.close()
        reader.close()
