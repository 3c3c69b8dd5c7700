"""What a ZooKeeper store lets kazoo log: nothing above debug for a server it never reached (our
own warning and ``StoreUnavailable`` say it), but every drop of an established connection."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from config_store import StoreUnavailable, open_store
from config_store._zk import kazoo_log_level
from config_store.testing import drop_connection

pytestmark = pytest.mark.zk

_KAZOO = "kazoo.client"


@pytest.mark.parametrize(
    ("level", "msg", "connected_once", "closing", "expected"),
    [
        (logging.WARNING, "Connection dropped: %s", False, False, logging.DEBUG),
        (logging.WARNING, "Connection time-out: %s", False, False, logging.DEBUG),
        (logging.WARNING, "Failed connecting to Zookeeper within the connection retry policy.",
         True, True, logging.DEBUG),
        (logging.WARNING, "Connection dropped: %s", True, True, logging.DEBUG),
        (logging.WARNING, "Connection dropped: %s", True, False, logging.WARNING),
        (logging.WARNING, "Cannot resolve %s: %s", False, False, logging.WARNING),
        (logging.ERROR, "Unhandled exception in connection loop", False, True, logging.ERROR),
        (logging.INFO, "Zookeeper connection lost", False, False, logging.INFO),
    ],
)  # fmt: skip
def test_only_connection_attempts_we_report_ourselves_are_lowered(
    level: int, msg: str, connected_once: bool, closing: bool, expected: int
) -> None:
    assert kazoo_log_level(level, msg, connected_once=connected_once, closing=closing) == expected


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback port bound by this test and not listening: connections are refused, and no
    other process can take the port meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_a_server_never_reached_leaves_no_kazoo_warning(
    refusing_port: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=_KAZOO)
    store = open_store(
        f"zk://127.0.0.1:{refusing_port}/x?connect_timeout=0.5",
        snapshot_dir=tmp_path / "snap",
        failover_dir=False,
    )
    try:
        with pytest.raises(StoreUnavailable):
            store.get("m")
    finally:
        store.close()
    kazoo = [r for r in caplog.records if r.name == _KAZOO]
    assert any(r.getMessage().startswith("Connection dropped") for r in kazoo)  # it did try
    assert [r.getMessage() for r in kazoo if r.levelno >= logging.WARNING] == []
    ours = [r.getMessage() for r in caplog.records if r.name == "config_store.zk"]
    assert any("unreachable after 0.5s" in m for m in ours)


def test_a_dropped_connection_is_still_a_kazoo_warning(
    zk_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Operators (and scripts/demo_cluster.py) count these on the ``kazoo.client`` logger."""
    with open_store(zk_url, snapshot_dir=False, failover_dir=False) as store:
        assert store.wait_connected(30)
        drop_connection(store)
    dropped = [
        r
        for r in caplog.records
        if r.name == _KAZOO and r.getMessage().startswith("Connection dropped")
    ]
    assert dropped and all(r.levelno == logging.WARNING for r in dropped)
