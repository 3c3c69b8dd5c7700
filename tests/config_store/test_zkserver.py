"""The loopback ZooKeeper harness itself: JVM options reach the server, the live heap after a
full collection tracks the data it holds (what the soak reports beside the RSS), and what a server
says about its clients (``cons``, ``dump``) is parsed right, on real answers of ZooKeeper 3.8."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from config_store import open_store
from config_store.testing import (
    ClientConnection,
    ZooKeeperServer,
    parse_cons,
    parse_ephemerals,
    session_id,
)
from config_store.testing._zkserver import java_available

HEAP_MIB = 96


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.mark.zk
def test_jvm_options_presize_the_heap_and_the_live_heap_counts_the_data(tmp_path: Path) -> None:
    if not java_available():
        pytest.skip("java is not on PATH; apt-get install -y zookeeper brings it")
    options = [f"-Xms{HEAP_MIB}m", f"-Xmx{HEAP_MIB}m", "-XX:+AlwaysPreTouch"]
    server = ZooKeeperServer.standalone(tmp_path, jvm_options=options)
    server.start()
    try:
        assert server.pid is not None
        # every heap page touched before serving: the RSS starts above the heap's size
        assert rss_kib(server.pid) >= HEAP_MIB * 1024
        before = server.live_heap_kib()
        if before is None:
            pytest.skip("jcmd (a JDK tool) is not installed")
        assert 0 < before < HEAP_MIB * 1024
        store = open_store(f"zk://{server.address}/harness")
        try:
            for k in range(16):  # 4 MiB of content, twice over with its history entries
                store.publish(f"blob-{k}", os.urandom(256 * 1024))
            during = server.live_heap_kib()
            assert during is not None and during - before >= 4 * 1024
        finally:
            store.close()
    finally:
        server.stop(kill=True)
    assert server.live_heap_kib() is None  # stopped: nothing to ask


# Answers of a 3-node ensemble of ZooKeeper 3.8.0 (Debian), two clients with one ephemeral each.
CONS = (
    " /127.0.0.1:53826[0](queued=0,recved=1,sent=0)\n"
    " /127.0.0.1:53804[1](queued=0,recved=22,sent=22,sid=0x30000072cf10000,lop=EXIS,"
    "est=1796631291778,to=4000,lcxid=0x15,lzxid=0x10000000b,lresp=470450,llat=1,minlat=0,"
    "avglat=3,maxlat=10)\n"
    " /0:0:0:0:0:0:0:1:49116[1](queued=0,recved=8,sent=8,sid=0x10000072cdd0000,lop=EXIS,"
    "est=1796631291846,to=10000,lcxid=0x7,lzxid=0x10000000e,lresp=470478,llat=0,minlat=0,"
    "avglat=3,maxlat=9)\n"
    "\n"
)
LEADER_DUMP = (
    "SessionTracker dump:\n"
    "Session Sets (2)/(2):\n"
    "1 expire at Mon Dec 07 08:14:55 UTC 2026:\n"
    "\t0x30000072cf10000\n"
    "1 expire at Mon Dec 07 08:15:01 UTC 2026:\n"
    "\t0x10000072cdd0000\n"
    "ephemeral nodes dump:\n"
    "Sessions with Ephemerals (2):\n"
    "0x30000072cf10000:\n"
    "\t/probe/services/svc/instances/127.0.0.1:1234\n"
    "0x10000072cdd0000:\n"
    "\t/probe/services/svc/instances/127.0.0.1:1235\n"
    "\t/probe/services/other/instances/127.0.0.1:1236\n"
    "Connections dump:\n"
    "Connections Sets (2)/(2):\n"
    "1 expire at Mon Dec 07 08:15:01 UTC 2026:\n"
    "\tip: /127.0.0.1:53804 sessionId: 0x30000072cf10000\n"
)
FOLLOWER_DUMP_NO_EPHEMERALS = (
    "SessionTracker dump:\n"
    "Global Sessions(1):\n"
    "0x10000072cdd0000\t10000ms\n"
    "ephemeral nodes dump:\n"
    "Sessions with Ephemerals (0):\n"
    "Connections dump:\n"
    "Connections Sets (1)/(1):\n"
    "1 expire at Mon Dec 07 08:15:11 UTC 2026:\n"
    "\tip: /127.0.0.1:34496 sessionId: 0x0\n"
)


def test_cons_lists_the_connections_that_carry_a_session() -> None:
    assert parse_cons(CONS) == [
        ClientConnection("127.0.0.1:53804", 0x30000072CF10000, 1796631291.778),
        ClientConnection("0:0:0:0:0:0:0:1:49116", 0x10000072CDD0000, 1796631291.846),
    ]


def test_cons_without_clients_or_with_unknown_lines_is_empty() -> None:
    assert parse_cons(" /127.0.0.1:34492[0](queued=0,recved=1,sent=0)\n\n") == []
    assert parse_cons("This ZooKeeper instance is not currently serving requests\n") == []
    assert parse_cons("") == []


def test_dump_gives_each_sessions_ephemeral_nodes() -> None:
    assert parse_ephemerals(LEADER_DUMP) == {
        0x30000072CF10000: ["/probe/services/svc/instances/127.0.0.1:1234"],
        0x10000072CDD0000: [
            "/probe/services/svc/instances/127.0.0.1:1235",
            "/probe/services/other/instances/127.0.0.1:1236",
        ],
    }


def test_dump_without_ephemerals_is_empty() -> None:
    # The session ids of the tracker's section and the connections' section are not ephemerals.
    assert parse_ephemerals(FOLLOWER_DUMP_NO_EPHEMERALS) == {}
    assert parse_ephemerals("This ZooKeeper instance is not currently serving requests\n") == {}


@pytest.mark.zk
def test_a_server_lists_a_clients_session_connection_and_ephemerals(tmp_path: Path) -> None:
    if not java_available():
        pytest.skip("java is not on PATH; apt-get install -y zookeeper brings it")
    server = ZooKeeperServer.standalone(tmp_path)
    server.start()
    try:
        before = time.time()
        with open_store(f"zk://{server.address}/harness", snapshot_dir=False) as store:
            after = time.time()
            session = session_id(store)
            with store.register("svc", "127.0.0.1", 1234, {}):
                (mine,) = [c for c in server.connections() if c.session_id == session]
                ephemerals = server.ephemerals()
        assert before - 0.01 <= mine.established <= after + 0.01  # ms resolution
        assert mine.remote.startswith("127.0.0.1:")
        assert ephemerals == {session: ["/harness/services/svc/instances/127.0.0.1:1234"]}
    finally:
        server.stop(kill=True)
