"""pytest fixtures that run real ZooKeeper servers (kazoo's harness pattern, without its quirks).

Load with ``pytest_plugins = ["config_store.testing.plugin"]``. Fixtures:

- ``zk_server``: one standalone server for the session; tests must not stop it.
- ``zk_own_server``: a standalone server of the test's own, to stop and restart at will.
- ``zk_ensemble``: a 3-node ensemble for the session; every node is running when a test starts.
- ``zk_chroot``: a fresh chroot per test; ``zk_url``: ``zk://`` URL of ``zk_server`` + that chroot.

Without Debian's ``zookeeper`` package the tests are skipped, or fail when ``AUTOAI_REQUIRE_ZK=1``
(set by ``make test``, so CI never silently skips them).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from ._zkserver import (
    ZooKeeperEnsemble,
    ZooKeeperNotInstalled,
    ZooKeeperServer,
    java_available,
    zookeeper_classpath,
)


def _require_zookeeper() -> None:
    try:
        zookeeper_classpath()
        if not java_available():
            raise ZooKeeperNotInstalled(
                "java is not on PATH; apt-get install -y zookeeper brings it"
            )
    except ZooKeeperNotInstalled as exc:
        if os.environ.get("AUTOAI_REQUIRE_ZK") == "1":
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def zk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperServer]:
    _require_zookeeper()
    server = ZooKeeperServer.standalone(tmp_path_factory.mktemp("zk-shared"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def zk_own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperServer]:
    _require_zookeeper()
    server = ZooKeeperServer.standalone(tmp_path_factory.mktemp("zk-own"))
    server.start()
    yield server
    server.stop(kill=True)


@pytest.fixture(scope="session")
def _zk_ensemble_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperEnsemble]:
    _require_zookeeper()
    ensemble = ZooKeeperEnsemble(tmp_path_factory.mktemp("zk-ensemble"))
    ensemble.start()
    yield ensemble
    ensemble.stop(kill=True)


@pytest.fixture
def zk_ensemble(_zk_ensemble_session: ZooKeeperEnsemble) -> ZooKeeperEnsemble:
    for server in _zk_ensemble_session:
        server.start(wait=False)
    for server in _zk_ensemble_session:
        server.wait_ready()
    return _zk_ensemble_session


@pytest.fixture
def zk_chroot() -> str:
    return f"/t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def zk_url(zk_server: ZooKeeperServer, zk_chroot: str) -> str:
    return f"zk://{zk_server.address}{zk_chroot}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On failure, attach the tail of every ZooKeeper log the test used."""
    report = yield
    if report.failed and call.when == "call":  # type: ignore[attr-defined]
        for value in getattr(item, "funcargs", {}).values():
            servers = value.servers if isinstance(value, ZooKeeperEnsemble) else [value]
            for server in servers:
                if isinstance(server, ZooKeeperServer):
                    report.sections.append((f"zookeeper {server.address}", server.log_tail(40)))  # type: ignore[attr-defined]
    return report
