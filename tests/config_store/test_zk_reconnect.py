"""ZooKeeper clients after an outage: how soon they are back, and what they answer meanwhile."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from config_store import StoreUnavailable, open_store
from config_store._zk import RECONNECT_BACKOFF, reconnect_bound, reconnect_pauses
from config_store.testing import ZooKeeperServer, zk_backend
from tests.fixtures.waiting import wait

pytestmark = pytest.mark.zk


def test_the_reconnect_pause_is_bounded() -> None:
    """However long the outage, kazoo's own retry loop stops growing its pause at the bound."""
    assert reconnect_bound() <= 2.0
    pauses = reconnect_pauses(300)  # a long outage: 300 failed rounds over the hosts
    assert len(pauses) == 300
    assert max(pauses) <= reconnect_bound()
    assert pauses[0] < 0.1  # the first retry is quick
    floor = RECONNECT_BACKOFF["max_delay"] * (1 - RECONNECT_BACKOFF["max_jitter"])
    assert min(pauses[-200:]) >= floor * 0.99  # and it did reach the cap: kazoo's rule holds


def test_a_client_is_back_soon_after_a_long_outage(
    zk_own_server: ZooKeeperServer, tmp_path: Path
) -> None:
    """Down long enough for the backoff to reach its cap, then back: connected within a bound
    that a growing backoff (kazoo's default doubles without end) would overrun."""
    store = open_store(f"zk://{zk_own_server.address}/back", snapshot_dir=False)
    try:
        assert store.wait_connected(30)
        kazoo_retry = zk_backend(store).client._conn_retry
        assert (kazoo_retry.max_delay, kazoo_retry.max_jitter) == (
            RECONNECT_BACKOFF["max_delay"],
            RECONNECT_BACKOFF["max_jitter"],
        )
        zk_own_server.stop(kill=True)
        down = time.monotonic()
        # kazoo notices the closed socket on its own thread: on a loaded machine a moment later
        wait(lambda: store.state != "connected", 30, "the client to notice the outage")
        while time.monotonic() - down < 8.0:  # the outage itself: 0.05 s doubled passes 1 s
            assert store.state != "connected"
            time.sleep(0.1)
        zk_own_server.start()  # returns once the server answers
        ready = time.monotonic()
        assert store.wait_connected(30)
        took = time.monotonic() - ready
        print(f"connected {took:.2f} s after the server answered (pause bound {reconnect_bound()})")
        assert took < 10.0
    finally:
        store.close()


def test_instances_answers_the_last_known_list_while_cut_off(
    zk_own_server: ZooKeeperServer, tmp_path: Path
) -> None:
    """A client that never watched a service still answers from its last answer; one that never
    asked has nothing to answer with."""
    url = f"zk://{zk_own_server.address}/cutoff"
    holder = open_store(url + "?session_timeout=30", snapshot_dir=False)
    asker = open_store(url, snapshot_dir=False)
    try:
        holder.register("svc", "127.0.0.1", 9000)
        assert [i.id for i in asker.instances("svc")] == ["127.0.0.1:9000"]
        zk_own_server.stop(kill=True)
        deadline = time.monotonic() + 30
        while asker.state == "connected":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert [i.id for i in asker.instances("svc")] == ["127.0.0.1:9000"]
        with pytest.raises(StoreUnavailable):
            asker.instances("never-asked")
    finally:
        if not zk_own_server.running:
            zk_own_server.start()
        holder.close()
        asker.close()
