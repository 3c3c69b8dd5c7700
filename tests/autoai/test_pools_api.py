"""Pools through the REST API of a real control plane (``autoai up``, its reconciler on), on both
store backends: pooled deploys, ``/api/v1/pools``, an instance killed -9 and its versions
reloaded by the leader while SDK callers keep calling, undeploy, delete."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from autoai.orchestrators import LocalOrchestrator
from autoai.sdk import ModelClient
from config_store import open_store
from config_store.testing import free_ports
from tests.fixtures import onnx_models
from tests.fixtures.system import AUTH, ControlPlane, X, wait

pytestmark = pytest.mark.slow

POOL_TOKEN = "pool-token"


@pytest.fixture(params=["sqlite", "zk"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "zk":
        return str(request.getfixturevalue("zk_url")) + "?session_timeout=4"
    return f"sqlite://{tmp_path / 'store.db'}?lease_ttl=2"


@pytest.fixture
def plane(store_url: str, tmp_path: Path) -> Iterator[ControlPlane]:
    url = store_url
    plane = ControlPlane(url, tmp_path, free_ports(1)[0])
    try:
        yield plane
    finally:
        if plane.proc.poll() is None:
            plane.kill()
        with open_store(url, snapshot_dir=False) as store:
            orchestrator = LocalOrchestrator(store, url, tmp_path / "run")
            for pid in orchestrator.processes():
                os.kill(pid, signal.SIGKILL)


def test_pools_through_the_api(plane: ControlPlane, tmp_path: Path) -> None:
    plane.wait(plane.leads, 30, "the control plane to lead")
    for tag in (1.0, 2.0):
        uri = f"file://{onnx_models.tagged(tmp_path, tag)}"
        plane.call("POST", "/api/v1/models", 201, json={"name": "m", "uri": uri})
    plane.deploy("1", {"token": POOL_TOKEN, "metadata.pool": "p", "metadata.instance": 2})
    plane.deploy("2", {"metadata": {"pool": "p"}})
    assert httpx.get(f"{plane.url}/api/v1/pools/nope").status_code == 404
    pools = plane.call("GET", "/api/v1/pools")["pools"]
    assert [(p["name"], p["size"], p["deployments"]) for p in pools] == [("p", 2, ["m/1", "m/2"])]
    assert all(i["alive"] and i["ready"] for i in pools[0]["instances"])
    two = plane.call("GET", "/api/v1/models/m/versions/2/deployment")
    assert two["pooled"]["pool"] == "p" and len(two["pooled"]["hosts"]) == 1
    assert two["spec"]["metadata"] == {"pool": "p"}
    assert [i["ready"] for i in two["instances"]] == [True]
    assert len(plane.call("GET", "/api/v1/models/m/versions/1/deployment")["endpoints"]) == 2
    groups = plane.call("GET", "/api/v1/sd/prometheus")  # each pool instance scraped once
    assert [(g["labels"].get("pool"), len(g["targets"])) for g in groups] == [("p", 2)]
    routes = [{"version": "1", "weight": 50}, {"version": "2", "weight": 50}]
    plane.call("POST", "/api/v1/models/m/publish", json={"routes": routes})
    refused = httpx.delete(f"{plane.url}/api/v1/pools/p", headers=AUTH)
    assert refused.status_code == 409 and refused.json()["detail"]["deployments"] == ["m/1", "m/2"]
    assert httpx.delete(f"{plane.url}/api/v1/pools/p").status_code == 401

    store = open_store(plane.process.store_url, snapshot_dir=False)
    sdk = ModelClient(store, token=POOL_TOKEN, registry=CollectorRegistry())
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    stop = threading.Event()

    def count(outcome: str) -> None:
        with lock:
            outcomes[outcome] += 1

    def call() -> None:  # each call retried until it succeeds (at most 60 s): none may be lost
        while not stop.is_set():
            deadline = time.monotonic() + 60
            while True:
                try:
                    y = round(float(sdk.predict("m", X)["y"][0, 0]))
                    count(f"v{y}")
                    break
                except Exception as exc:
                    if time.monotonic() > deadline:
                        count(f"lost: {exc}")
                        break
                    count("retried")
                    stop.wait(0.05)

    threads = [threading.Thread(target=call, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        wait(lambda: outcomes["v2"] > 10, 30, "calls to both versions")
        (host,) = two["pooled"]["hosts"]
        (victim,) = [i for i in two["instances"] if host.endswith(f":{i['port']}")]
        os.kill(victim["pid"], signal.SIGKILL)

        def moved() -> bool:
            deployment = plane.call("GET", "/api/v1/models/m/versions/2/deployment")
            hosts = deployment["pooled"]["hosts"]
            return bool(hosts) and hosts != [host] and deployment["pooled"]["moves"] != []

        plane.wait(moved, 30, "version 2 to be reloaded on the other instance")
        served = outcomes["v2"]
        wait(lambda: outcomes["v2"] > served + 10, 30, "version 2 served again")

        def whole() -> bool:
            pool = plane.call("GET", "/api/v1/pools/p")
            one = plane.call("GET", "/api/v1/models/m/versions/1/deployment")
            return (
                all(i["alive"] and i["ready"] for i in pool["instances"])
                and victim["pid"] not in {i["pid"] for i in pool["instances"]}
                and len(one["pooled"]["hosts"]) == 2
            )

        plane.wait(whole, 60, "the pool restarted and version 1 on two instances again")
    finally:
        stop.set()
        for t in threads:
            t.join(90)
        sdk.close()
    lost = {k: n for k, n in outcomes.items() if k.startswith("lost")}
    assert not lost, outcomes
    assert outcomes["v1"] > 20 and outcomes["v2"] > 20, outcomes

    plane.call("DELETE", "/api/v1/models/m/versions/1/deploy?force=true", 204)
    plane.call("DELETE", "/api/v1/models/m/versions/2/deploy?force=true", 204)
    wait(  # unloaded: deregistered (a ZooKeeper client's view follows within a moment)
        lambda: store.instances("m-1") == [] and store.instances("m-2") == [],
        10,
        "the versions' registrations to go",
    )
    pool = plane.call("GET", "/api/v1/pools/p")
    assert pool["deployments"] == [] and len(pool["instances"]) == 2
    pids = [i["pid"] for i in pool["instances"]]
    plane.call("DELETE", "/api/v1/pools/p", 204)
    assert httpx.get(f"{plane.url}/api/v1/pools/p").status_code == 404
    orchestrator = LocalOrchestrator(store, plane.process.store_url, tmp_path / "run")
    assert not set(pids) & set(orchestrator.processes())
    assert not orchestrator.processes()
    store.close()
