"""The SDK keeps serving when the store goes away: a 30 s ZooKeeper outage under load, a cold
start from the local snapshot with ZooKeeper down, and an instance killed under load."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from autoai.sdk import ModelClient
from config_store.testing import ZooKeeperServer

from .conftest import MODEL, Fleet, _fleet, route_table, tag_of, wait_for, x

pytestmark = [pytest.mark.zk, pytest.mark.slow]


@pytest.fixture
def own_fleet(zk_own_server: ZooKeeperServer, tmp_path: Path) -> Iterator[Fleet]:
    """Versions 1 and 2 on a ZooKeeper of this test only (the test stops it)."""
    url = f"zk://{zk_own_server.address}/f{uuid.uuid4().hex[:8]}"
    yield from _fleet(url, tmp_path, ["1", "2"])


class _Load:
    """Callers that predict in a loop and keep every failure."""

    def __init__(self, client: ModelClient, threads: int = 8) -> None:
        self.client = client
        self.inputs = x()
        self.calls = 0
        self.tags: list[int] = []
        self.failures: list[BaseException] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = self.client.predict(MODEL, self.inputs)
                self.tags.append(tag_of(self.inputs, out))
            except BaseException as exc:
                self.failures.append(exc)
            self.calls += 1
            time.sleep(0.002)

    def __enter__(self) -> _Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)


def test_store_stopped_for_30_s_under_load(
    own_fleet: Fleet, zk_own_server: ZooKeeperServer, tmp_path: Path
) -> None:
    own_fleet.publish(route_table([{"version": "1", "weight": 50}, {"version": "2", "weight": 50}]))
    client = ModelClient(own_fleet.url, registry=CollectorRegistry(), snapshot_dir=tmp_path / "s")
    with client, _Load(client) as load:
        wait_for(lambda: load.calls > 100, what="traffic")
        zk_own_server.stop()
        before = load.calls
        time.sleep(30)
        assert load.calls > before + 500, "calls stalled while the store was down"
        zk_own_server.start()
        revision = own_fleet.publish(route_table([{"version": "2", "weight": 100}]))
        wait_for(lambda: client.routes(MODEL).revision == revision, 30, "the new revision")
        mark = len(load.tags)
        wait_for(lambda: len(load.tags) > mark + 50, what="traffic after the store returned")
    assert not load.failures, load.failures[:3]
    assert set(load.tags[mark + 8 :]) == {2}


def test_cold_start_from_the_snapshot_with_the_store_down(
    own_fleet: Fleet, zk_own_server: ZooKeeperServer, tmp_path: Path
) -> None:
    own_fleet.publish(route_table([{"version": "2", "weight": 100}]))
    snapshot = tmp_path / "snapshot"
    inputs = x()
    with ModelClient(own_fleet.url, registry=CollectorRegistry(), snapshot_dir=snapshot) as warm:
        assert tag_of(inputs, warm.predict(MODEL, inputs)) == 2
    zk_own_server.stop()
    started = time.monotonic()
    with ModelClient(own_fleet.url, registry=CollectorRegistry(), snapshot_dir=snapshot) as cold:
        assert tag_of(inputs, cold.predict(MODEL, inputs)) == 2
        for _ in range(20):
            assert tag_of(inputs, cold.predict(MODEL, inputs)) == 2
    assert time.monotonic() - started < 10


def test_an_instance_killed_under_load_fails_no_call(own_fleet: Fleet) -> None:
    spare = own_fleet.serve("1")  # a second instance of version 1
    own_fleet.wait_registered(f"{MODEL}-1", 2)
    own_fleet.publish(route_table([{"version": "1", "weight": 100}]))
    with (
        ModelClient(own_fleet.url, registry=CollectorRegistry()) as client,
        _Load(client, threads=32) as load,
    ):
        wait_for(lambda: load.calls > 200, what="traffic")
        spare.proc.kill()
        mark = load.calls
        wait_for(lambda: load.calls > mark + 500, what="traffic after the kill")
    assert not load.failures, load.failures[:3]
