"""Pools against real eas-server processes (``--model-repository``) on the embedded store: two
versions placed on a pool of two instances and called through the SDK; one instance killed -9,
its versions reloaded on the other and served again (calls retried, none lost) and on its
replacement; scale, undeploy unloads, orphan versions unloaded, delete; and what is refused."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from prometheus_client import CollectorRegistry

from autoai.deployments import DeploymentService
from autoai.errors import Conflict, InvalidRequest, NotFound
from autoai.jobs import Job, JobRunner
from autoai.orchestrators import InstanceRecord, LocalOrchestrator
from autoai.pools import PoolService
from autoai.reconciler import PassReport, Reconciler
from autoai.releases import ReleaseService
from autoai.repository import ModelRepository
from autoai.schema import (
    DeploymentRecord,
    DeploySpec,
    PooledPlacement,
    PoolRecord,
    PublishRequest,
    PublishRoute,
)
from autoai.sdk import ModelClient
from autoai.testing import wait
from config_store import ConfigStore, open_store
from tests.fixtures import onnx_models

pytestmark = pytest.mark.slow

TOKEN = "pool-token"
X = {"x": np.zeros((1, 4), np.float32)}


class Plane:
    """The control plane's services without HTTP, as replica ``r1``, on one SQLite store."""

    def __init__(self, tmp_path: Path):
        self.url = f"sqlite://{tmp_path / 'store.db'}?lease_ttl=2"
        self.store: ConfigStore = open_store(self.url, snapshot_dir=False)
        self.jobs = JobRunner()
        self.repository = ModelRepository(
            tmp_path / "repo",
            self.store,
            is_deployed=lambda n, v: self.deployments.is_deployed(n, v),
        )
        self.orchestrator = LocalOrchestrator(self.store, self.url, tmp_path / "run")
        self.deployments = DeploymentService(
            self.store, self.repository, self.orchestrator, self.jobs, tmp_path / "art", "r1"
        )
        self.pools: PoolService = self.deployments.pools
        self.releases = ReleaseService(self.store, self.repository, self.deployments)
        self.reconciler = Reconciler(
            self.store,
            self.orchestrator,
            is_leader=lambda: True,
            live_replicas=lambda: {"r1"},
            backoff_max=2.0,
            pools=self.pools,
        )

    def deploy(self, version: str, spec: dict[str, object]) -> Job:
        return _done(self.deployments.deploy("m", version, DeploySpec.model_validate(spec)))

    def record(self, version: str) -> DeploymentRecord:
        item = self.store.get(f"deployment.m.{version}", group="control")
        assert item is not None
        return DeploymentRecord.model_validate_json(item.content)

    def placed(self, version: str) -> PooledPlacement:
        """Where the pooled deployment of ``version`` is loaded."""
        placed = self.record(version).pooled
        assert placed is not None
        return placed

    def pool(self, name: str = "shared") -> PoolRecord:
        return self.pools.require(name)

    def index(self, address: str) -> list[tuple[str, str, str]]:
        """What one pool instance hosts: (name, version, state)."""
        answer = httpx.post(
            f"http://{address}/v2/repository/index",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=10,
        )
        answer.raise_for_status()
        return sorted((e["name"], e["version"], e["state"]) for e in answer.json())

    def close(self) -> None:
        self.jobs.wait(60)
        self.pools.close()
        self.orchestrator.stop(
            [InstanceRecord(pid=pid) for pid in self.orchestrator.processes()], timeout=5
        )
        self.store.close()


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    p = Plane(tmp_path)
    try:
        for tag in (1.0, 2.0, 3.0):
            p.repository.register("m", onnx_models.tagged(tmp_path, tag))
        yield p
    finally:
        p.close()


def _done(job: Job) -> Job:
    assert job.done.wait(180), job.info()
    assert job.state == "succeeded", job.info()
    return job


def _kill(pid: int) -> None:
    """SIGKILL, then wait until it is gone or a zombie (init reaps it later)."""
    process = psutil.Process(pid)
    process.kill()
    deadline = time.monotonic() + 10
    with contextlib.suppress(psutil.NoSuchProcess):
        while process.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.02)


def _until(
    plane: Plane, done: Callable[[], bool], what: str, timeout: float = 60
) -> list[PassReport]:
    """Reconciliation passes until ``done()`` holds; returns their reports."""
    reports: list[PassReport] = []

    def step() -> bool:
        reports.append(plane.reconciler.pass_once())
        return done()

    wait(step, timeout, what, step=0.1)
    return reports


class Callers:
    """Threads calling ``m`` through the SDK: version ``1`` pinned (on both instances: the SDK
    retries on the other) and version ``2`` pinned (on one instance: a logical call is retried by
    the caller until it succeeds, at most ``patience`` seconds). Counts every logical call."""

    def __init__(self, sdk: ModelClient, patience: float = 60.0):
        self.sdk = sdk
        self.patience = patience
        self.outcomes: Counter[str] = Counter()
        self.retries: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(v,), daemon=True) for v in ("1", "1", "2", "2")
        ]
        for t in self._threads:
            t.start()

    def _run(self, version: str) -> None:
        while not self._stop.is_set():
            deadline = time.monotonic() + self.patience
            while True:
                try:
                    y = self.sdk.predict("m", X, version=version)["y"]
                    outcome = "ok" if round(float(y[0, 0])) == int(version) else f"wrong {y}"
                    break
                except Exception as exc:
                    if time.monotonic() > deadline:
                        outcome = f"lost: {type(exc).__name__}: {exc}"
                        break
                    with self._lock:
                        self.retries[version] += 1
                    self._stop.wait(0.05)
            with self._lock:
                self.outcomes[f"v{version} {outcome}"] += 1
            self._stop.wait(0.005)

    def count(self, key: str) -> int:
        with self._lock:
            return self.outcomes[key]

    def stop(self) -> Counter[str]:
        self._stop.set()
        for t in self._threads:
            t.join(self.patience + 30)
        return self.outcomes


def _kill_and_repair(
    plane: Plane, pool: PoolRecord, callers: Callers, members: list[str], host_of_2: str
) -> None:
    """Kill the instance hosting version 2 while ``callers`` call; reconcile until 2 moved to
    the survivor and the restarted instance hosts 1 again."""
    wait(lambda: callers.count("v2 ok") > 20, 30, "calls to both versions")

    # The instance hosting version 2 is killed: 2 is loaded on the other one at once.
    (victim,) = [
        i
        for i in pool.instances
        if isinstance(i, InstanceRecord) and host_of_2.endswith(f":{i.port}")
    ]
    (survivor,) = [a for a in members if a != host_of_2]
    served_before = callers.count("v2 ok")
    _kill(victim.pid)
    reports = _until(plane, lambda: plane.placed("2").hosts == [survivor], "2 to move")
    assert any(r.moved for r in reports), reports
    moved = plane.record("2").pooled
    assert moved is not None and moved.moves[-1].lost == [host_of_2]
    assert moved.moves[-1].added == [survivor]
    assert ("m", "2", "READY") in plane.index(survivor)
    wait(lambda: callers.count("v2 ok") > served_before + 20, 30, "2 served again")

    # The dead instance is restarted (empty), and 1 is loaded on it again: 2 instances.
    def back_to_two() -> bool:
        placed = plane.record("1").pooled
        return placed is not None and len(placed.hosts) == 2

    _until(plane, back_to_two, "1 back on two instances")
    restarted = plane.pool()
    assert victim.pid not in {i.pid for i in restarted.instances if isinstance(i, InstanceRecord)}
    assert len(plane.pools.members(restarted)) == 2
    one_moves = plane.placed("1").moves
    # two moves: off the dead instance (one live instance left), onto its replacement
    assert [(m.lost, len(m.added)) for m in one_moves] == [([host_of_2], 0), ([], 1)]
    assert len(plane.placed("2").hosts) == 1
    served_after = callers.count("v1 ok") + callers.count("v2 ok")
    wait(
        lambda: callers.count("v1 ok") + callers.count("v2 ok") > served_after + 40,
        30,
        "calls after the repair",
    )


def test_a_pool_keeps_its_versions_served_when_an_instance_is_killed(plane: Plane) -> None:
    # Version 1 on both instances of a new pool of two, version 2 on one (the less loaded).
    plane.deploy(
        "1", {"token": TOKEN, "metadata": {"pool": "shared", "pool_instances": 2, "instance": 2}}
    )
    plane.deploy("2", {"metadata": {"pool": "shared"}})
    pool = plane.pool()
    assert pool.size == 2 and pool.service == "pool-shared" and pool.created_by == "m/1"
    members = plane.pools.members(pool)
    assert len(members) == 2
    one, two = plane.record("1"), plane.record("2")
    assert one.pooled is not None and two.pooled is not None
    assert one.instances == [] and one.orchestrator == "local"
    assert sorted(one.pooled.hosts) == members
    (host_of_2,) = two.pooled.hosts
    assert two.pooled.config["service"] == "m-2" and two.pooled.model_bytes > 0
    assert "token" not in two.pooled.config
    # each version registers under its own service, with the pool instance's address
    assert sorted(i.address for i in plane.store.instances("m-1")) == members
    assert [i.address for i in plane.store.instances("m-2")] == [host_of_2]
    assert all(
        ("m", "1", "READY") in plane.index(a)
        and (("m", "2", "READY") in plane.index(a)) == (a == host_of_2)
        for a in members
    )
    described = plane.deployments.get("m", "2")
    assert [i.ready for i in described.instances] == [True]
    assert described.endpoints == [f"http://{host_of_2}"]
    pool_pids = {i.pid for i in pool.instances if isinstance(i, InstanceRecord)}
    assert set(plane.orchestrator.processes()) == pool_pids  # no process of their own

    # Published and called through the SDK, with the pool's token.
    routes = [PublishRoute(version="1", weight=50), PublishRoute(version="2", weight=50)]
    plane.releases.publish("m", PublishRequest(routes=routes))
    sdk = ModelClient(plane.store, token=TOKEN, registry=CollectorRegistry())
    try:
        assert {round(float(sdk.predict("m", X)["y"][0, 0])) for _ in range(40)} == {1, 2}
        callers = Callers(sdk)
        try:
            _kill_and_repair(plane, pool, callers, members, host_of_2)
        finally:
            outcomes = callers.stop()
    finally:
        sdk.close()
    lost = {k: n for k, n in outcomes.items() if not k.endswith(" ok")}
    assert not lost, lost
    assert outcomes["v1 ok"] > 50 and outcomes["v2 ok"] > 50, outcomes
    # 1 was on both instances: the SDK retried its calls on the survivor by itself; 2 was only
    # on the dead one until its reload, so its callers retried across that gap
    assert callers.retries.get("1", 0) == 0, callers.retries
    assert callers.retries.get("2", 0) > 0, callers.retries

    # Scale 2 onto both instances, then back to one; undeploy unloads from every instance.
    job = _done(plane.deployments.scale("m", "2", 2))
    assert job.result is not None and job.result.deployment is not None
    assert len(job.result.deployment.instances) == 2
    assert len(plane.store.instances("m-2")) == 2
    _done(plane.deployments.scale("m", "2", 1))
    assert len(plane.placed("2").hosts) == 1
    assert len(plane.store.instances("m-2")) == 1
    members = plane.pools.members(plane.pool())
    plane.deployments.undeploy("m", "1", force=True)
    plane.deployments.undeploy("m", "2", force=True)
    assert all(plane.index(a) == [] for a in members)
    assert plane.store.instances("m-1") == [] and plane.store.instances("m-2") == []
    assert plane.pool().name == "shared"  # the pool outlives its deployments

    plane.pools.delete("shared")
    with pytest.raises(NotFound):
        plane.pool()
    wait(lambda: not plane.orchestrator.processes(), 30, "the pool's instances to stop")


def test_what_a_pooled_deploy_refuses(plane: Plane) -> None:
    plane.deploy("1", {"token": TOKEN, "metadata": {"pool": "small", "pool_instances": 1}})
    with pytest.raises(Conflict, match="runs 1 instance"):
        plane.deployments.deploy(
            "m",
            "2",
            DeploySpec.model_validate({"metadata": {"pool": "small", "pool_instances": 3}}),
        )
    with pytest.raises(InvalidRequest, match="more than the 1 instance"):
        plane.deployments.deploy(
            "m", "2", DeploySpec.model_validate({"metadata": {"pool": "small", "instance": 2}})
        )
    with pytest.raises(InvalidRequest, match="token it was created with"):
        plane.deployments.deploy(
            "m", "2", DeploySpec.model_validate({"token": "other", "metadata": {"pool": "small"}})
        )
    with pytest.raises(InvalidRequest, match="more than the 1 instance"):
        plane.deployments.scale("m", "1", 2)
    with pytest.raises(Conflict, match="serves m/1"):
        plane.pools.delete("small")
    # a new pool asked for more instances than it will have (2 by default): nothing starts
    with pytest.raises(InvalidRequest, match="more than the 2 instance"):
        plane.deployments.deploy(
            "m", "3", DeploySpec.model_validate({"metadata": {"pool": "tiny", "instance": 3}})
        )
    assert plane.pools.record("tiny") is None
    assert plane.store.get("operation.pool.tiny", group="control") is None
    plane.deployments.undeploy("m", "1", force=True)
    plane.pools.delete("small")


def test_a_version_no_deployment_names_is_unloaded(plane: Plane) -> None:
    """What a deploy cut short leaves on a pool (loaded, never recorded) is unloaded by the
    reconciler, unless a live replica's operation on it runs."""
    plane.deploy("1", {"metadata": {"pool": "shared"}})
    pool = plane.pool()
    (address,) = plane.placed("1").hosts
    config = {**plane.placed("1").config, "version": "2", "service": "m-2"}
    config["model_path"] = plane.repository.version("m", "2").path
    plane.pools.client.load(address, plane.pools.token(pool), "m", config)
    assert ("m", "2", "READY") in plane.index(address)

    marker = plane.deployments.operations.begin("m", "2", "deploy")
    assert not plane.reconciler.pass_once().unloaded  # being deployed: left alone
    plane.deployments.operations.end("m", "2", marker)
    report = plane.reconciler.pass_once()
    assert report.unloaded == [f"m-2@{address}"], report
    assert plane.index(address) == [("m", "1", "READY")]
    plane.deployments.undeploy("m", "1", force=True)


def test_the_pool_service_json_names_an_empty_repository_and_the_token(plane: Plane) -> None:
    plane.deploy("1", {"token": TOKEN, "metadata": {"pool": "shared", "pool_instances": 1}})
    config = plane.orchestrator.config_path("pool-shared")
    doc = json.loads(config.read_text())
    assert doc["name"] == "pool-shared" and doc["token"] == TOKEN
    repository = Path(doc["model_repository"])
    assert repository.is_dir() and not any(repository.iterdir())
    assert config.stat().st_mode & 0o077 == 0  # owner-only: it holds the token
    registered = plane.store.instances("pool-shared")
    assert len(registered) == 1 and registered[0].payload["pool"] is True
    plane.deployments.undeploy("m", "1", force=True)
