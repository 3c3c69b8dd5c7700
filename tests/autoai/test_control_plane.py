"""The control plane as real processes (`autoai up`) on both store backends, killed with -9.

One scenario per backend, under steady SDK traffic that must see no failed call:
register two versions -> deploy both -> publish 90/10 -> the SDK splits 180/20 -> a second replica
joins as a follower -> the leader is killed (-9) mid-traffic and the follower takes over -> an
instance killed (-9) is restarted by the new leader -> that leader is killed mid-deploy -> a
restarted control plane stops the orphans of the cut deploy, adopts every recorded instance (no
duplicate) and can deploy the version again -> promote -> roll back.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from autoai.orchestrators import InstanceRecord, LocalOrchestrator
from autoai.sdk import ModelClient
from config_store import open_store
from config_store.testing import free_ports
from tests.fixtures import onnx_models
from tests.fixtures.system import ControlPlane, Traffic, X, records

pytestmark = pytest.mark.slow


def _split(sdk: ModelClient, calls: int = 200) -> Counter[int]:
    return Counter(round(float(sdk.predict("m", X)["y"][0, 0])) for _ in range(calls))


@pytest.fixture(params=["sqlite", "zk"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "zk":
        return str(request.getfixturevalue("zk_url")) + "?session_timeout=4"
    return f"sqlite://{tmp_path / 'store.db'}?lease_ttl=2"


@pytest.fixture
def cleanup(tmp_path: Path, store_url: str) -> Iterator[list[ControlPlane]]:
    planes: list[ControlPlane] = []
    yield planes
    for plane in planes:
        if plane.proc.poll() is None:
            plane.kill()
    with open_store(store_url, snapshot_dir=False) as store:
        orchestrator = LocalOrchestrator(store, store_url, tmp_path / "run")
        leftover = [InstanceRecord(pid=pid) for pid in orchestrator.processes()]
        for record in leftover:
            os.kill(record.pid, signal.SIGKILL)


def test_control_plane_killed_mid_traffic_and_mid_deploy(
    store_url: str, tmp_path: Path, cleanup: list[ControlPlane]
) -> None:
    first = ControlPlane(store_url, tmp_path, free_ports(1)[0])
    cleanup.append(first)
    first.wait(first.leads, 30, "the first replica to lead")
    for tag in (1.0, 2.0, 3.0):
        uri = f"file://{onnx_models.tagged(tmp_path, tag)}"
        first.call("POST", "/api/v1/models", 201, json={"name": "m", "uri": uri})
    first.deploy("1", {"metadata": {"instance": 2}})
    first.deploy("2", {})
    routes = [{"version": "1", "weight": 90}, {"version": "2", "weight": 10}]
    published = first.call("POST", "/api/v1/models/m/publish", json={"routes": routes})

    store = open_store(store_url, snapshot_dir=False)
    orchestrator = LocalOrchestrator(store, store_url, tmp_path / "run")
    sdk = ModelClient(store, registry=CollectorRegistry())
    traffic = None
    try:
        assert _split(sdk) == {1: 180, 2: 20}
        traffic = Traffic(sdk)

        # A second replica follows; the leader dies and it takes over reconciliation.
        second = ControlPlane(store_url, tmp_path, free_ports(1)[0])
        cleanup.append(second)
        health = second.health()
        assert health is not None and not health["leader"]
        assert health["leader_url"] == first.url
        first.kill()
        second.wait(second.leads, 20, "the second replica to take over")

        # The new leader restarts an instance that died.
        dead = records(store, "1")[0]
        os.kill(dead.pid, signal.SIGKILL)

        def replaced() -> bool:
            deployment = second.call("GET", "/api/v1/models/m/versions/1/deployment")
            return records(store, "1")[0].pid != dead.pid and all(
                i["ready"] and i["alive"] for i in deployment["instances"]
            )

        second.wait(replaced, 30, "the dead instance to be replaced")

        # The leader is killed while it deploys version 3: the deploy never finishes.
        job = second.deploy("3", {"metadata": {"instance": 2}}, wait=False)
        second.wait(
            lambda: "m-3" in orchestrator.processes().values(), 60, "version 3's first instance"
        )
        second.kill()
        assert "m-3" in orchestrator.processes().values()

        # A restarted control plane stops the orphans, adopts the rest, and can deploy 3 again.
        third = ControlPlane(store_url, tmp_path, first.port)
        cleanup.append(third)
        third.wait(third.leads, 30, "the restarted control plane to lead")
        third.wait(
            lambda: "m-3" not in orchestrator.processes().values(), 30, "the orphans to stop"
        )
        recorded = {r.pid for v in ("1", "2") for r in records(store, v)}
        assert set(orchestrator.processes()) == recorded  # no orphan, no duplicate
        assert len(recorded) == 3
        assert store.get("deployment.m.3", group="control") is None
        assert store.get("operation.m.3", group="control") is None
        assert job  # its job died with the replica that ran it
        third.deploy("3", {})
        assert third.call("GET", "/api/v1/models/m/versions/3/deployment")["endpoints"]

        outcomes = traffic.stop()
        traffic = None
        failed = {k: n for k, n in outcomes.items() if k != "ok"}
        assert not failed, failed
        assert outcomes["ok"] > 100

        # Promote 2 to all calls, then roll back to 90/10.
        body = {"routes": [{"version": "2", "weight": 100}], "reason": "promote"}
        promoted = third.call("POST", "/api/v1/models/m/publish", json=body)
        assert promoted["revision"] > published["revision"]
        third.wait(lambda: _split(sdk, 20) == {2: 20}, 10, "the SDK to follow the promotion")
        third.call("POST", "/api/v1/models/m/rollback", json={"revision": None})
        third.wait(lambda: set(_split(sdk, 50)) == {1, 2}, 10, "the SDK to follow the rollback")
        assert _split(sdk) == {1: 180, 2: 20}
        releases = third.call("GET", "/api/v1/models/m/releases")["releases"]
        reasons = [r["reason"] for r in releases]
        assert reasons[0].startswith("rollback to revision") and reasons[1] == "promote"
    finally:
        if traffic is not None:
            traffic.stop()
        sdk.close()
        store.close()
