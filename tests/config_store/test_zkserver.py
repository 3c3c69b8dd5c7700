"""The loopback ZooKeeper harness itself: JVM options reach the server, and the live heap after a
full collection tracks the data it holds (what the soak reports beside the RSS)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from config_store import open_store
from config_store.testing import ZooKeeperServer
from config_store.testing._zkserver import java_available

pytestmark = pytest.mark.zk

HEAP_MIB = 96


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


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
