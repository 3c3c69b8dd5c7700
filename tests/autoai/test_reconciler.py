"""Reconciliation, scaling and undeploy against real eas-server processes on the embedded store:
adopt what runs, restart what died (with backoff), stop orphans, respect running operations;
scale up and down under traffic with no failed call."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from autoai.deployments import DeploymentService, operation_key
from autoai.errors import Conflict, InvalidRequest
from autoai.jobs import Job, JobRunner
from autoai.orchestrators import InstanceRecord, LocalOrchestrator
from autoai.reconciler import Reconciler
from autoai.releases import ReleaseService
from autoai.repository import ModelRepository
from autoai.schema import (
    DeploymentRecord,
    DeployMetadata,
    DeploySpec,
    OperationMarker,
    PublishRequest,
    PublishRoute,
)
from config_store import ConfigStore, open_store
from eas_client import EasClient
from tests.fixtures import onnx_models

pytestmark = pytest.mark.slow

X = {"x": np.zeros((1, 4), np.float32)}


class Plane:
    """The control plane's services without HTTP, as replica ``r1``."""

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
        self.releases = ReleaseService(self.store, self.repository, self.deployments)
        self.live = {"r1"}
        self.reconciler = Reconciler(
            self.store,
            self.orchestrator,
            is_leader=lambda: True,
            live_replicas=lambda: set(self.live),
            backoff_max=4.0,
            stable_after=30.0,
        )

    def record(self, version: str = "1") -> list[InstanceRecord]:
        item = self.store.get(f"deployment.m.{version}", group="control")
        assert item is not None
        instances = DeploymentRecord.model_validate_json(item.content).instances
        return [i for i in instances if isinstance(i, InstanceRecord)]

    def close(self) -> None:
        self.jobs.wait(60)
        self.orchestrator.stop(
            [InstanceRecord(pid=pid) for pid in self.orchestrator.processes()],
            timeout=5,
        )
        self.store.close()


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    p = Plane(tmp_path)
    try:
        for tag in (1.0, 2.0):
            p.repository.register("m", onnx_models.tagged(tmp_path, tag))
        yield p
    finally:
        p.close()


def _done(job: Job) -> Job:
    assert job.done.wait(120), job.info()
    assert job.state == "succeeded", job.info()
    return job


def _routes(*routes: tuple[str, int]) -> PublishRequest:
    return PublishRequest(routes=[PublishRoute(version=v, weight=w) for v, w in routes])


def _spec(**metadata: int) -> DeploySpec:
    return DeploySpec(metadata=DeployMetadata(**metadata))


def _kill(pid: int) -> None:
    """SIGKILL, then wait until it is gone or a zombie (its parent, init, reaps it later)."""
    process = psutil.Process(pid)
    process.kill()
    deadline = time.monotonic() + 10
    with contextlib.suppress(psutil.NoSuchProcess):
        while process.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.02)


def test_adopts_live_instances_and_restarts_dead_ones_with_backoff(plane: Plane) -> None:
    _done(plane.deployments.deploy("m", "1", _spec(instance=2)))
    first = plane.record()
    report = plane.reconciler.pass_once()
    assert report.adopted == 2 and not report.busy()

    _kill(first[0].pid)
    report = plane.reconciler.pass_once()
    assert len(report.restarted) == 1, report
    second = plane.record()
    assert second[1] == first[1]
    assert second[0].pid != first[0].pid and second[0].restarts == 1
    assert sorted(plane.orchestrator.processes()) == sorted(r.pid for r in second)

    # It crashed again soon after its restart: the next restart waits (1 s, then 2 s ...).
    _kill(second[0].pid)
    report = plane.reconciler.pass_once()
    assert report.waiting == ["m-1#0"] and not report.restarted
    waited_from = time.monotonic()
    while not report.restarted:  # passes until the backoff has run out, however slow they are
        assert report.waiting == ["m-1#0"], report
        assert time.monotonic() - waited_from < 30, "the backoff never ran out"
        time.sleep(0.1)
        report = plane.reconciler.pass_once()
    assert len(report.restarted) == 1, report
    third = plane.record()
    assert third[0].restarts == 2
    assert len(plane.store.instances("m-1")) == 2
    assert plane.reconciler.pass_once().adopted == 2


def test_orphans_are_stopped_unless_a_live_replica_is_working_on_them(plane: Plane) -> None:
    _done(plane.deployments.deploy("m", "1", _spec()))
    recorded = plane.record()
    (orphan,) = plane.orchestrator.spawn("m-1", 1)  # started, never recorded
    report = plane.reconciler.pass_once()
    assert report.orphans == [orphan.pid]
    assert not plane.orchestrator.running(orphan)
    assert plane.orchestrator.running(recorded[0])

    # A deploy in flight on a live replica: its processes are not orphans.
    marker = OperationMarker(replica="r2", operation="deploy", started=time.time())
    plane.store.publish(operation_key("m", "2"), marker.model_dump_json().encode(), group="control")
    plane.live.add("r2")
    plane.orchestrator.config_path("m-2").write_text(
        plane.orchestrator.config_path("m-1").read_text().replace('"1"', '"2"')
    )
    (starting,) = plane.orchestrator.spawn("m-2", 1)
    report = plane.reconciler.pass_once()
    assert report.orphans == [] and report.stale_markers == []
    assert plane.orchestrator.running(starting)

    # That replica died: its marker is stale and what it started is stopped.
    plane.live.discard("r2")
    report = plane.reconciler.pass_once()
    assert report.stale_markers == [operation_key("m", "2")]
    assert report.orphans == [starting.pid]
    assert plane.store.get(operation_key("m", "2"), group="control") is None
    assert sorted(plane.orchestrator.processes()) == [recorded[0].pid]


def test_a_second_operation_on_a_version_is_a_conflict(plane: Plane) -> None:
    job = plane.deployments.deploy("m", "1", _spec())
    with pytest.raises(Conflict, match="still running"):
        plane.deployments.deploy("m", "1", _spec())
    _done(job)
    with pytest.raises(Conflict, match="already deployed"):
        plane.deployments.deploy("m", "1", _spec())
    assert plane.store.get(operation_key("m", "1"), group="control") is None


def test_scale_up_and_down_under_traffic_fails_no_call(plane: Plane) -> None:
    _done(plane.deployments.deploy("m", "1", _spec()))
    stop = threading.Event()
    outcomes: list[str] = []

    def traffic() -> None:
        with EasClient(store=plane.url, service="m-1", model="m") as client:
            while not stop.is_set():
                try:
                    client.infer(X)
                    outcomes.append("ok")
                except Exception as exc:
                    outcomes.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        _done(plane.deployments.scale("m", "1", 3))
        assert len(plane.record()) == 3
        assert len(plane.store.instances("m-1")) == 3
        time.sleep(0.5)
        kept = plane.record()[0]
        _done(plane.deployments.scale("m", "1", 1))
        assert plane.record() == [kept]
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    failed = [o for o in outcomes if o != "ok"]
    assert not failed, failed[:5]
    assert len(outcomes) > 50
    assert sorted(plane.orchestrator.processes()) == [kept.pid]
    item = plane.store.get("deployment.m.1", group="control")
    assert item is not None
    assert DeploymentRecord.model_validate_json(item.content).spec.metadata.instance == 1
    assert json.loads(item.content)["spec"]["metadata"]["instance"] == 1  # as stored


def test_undeploy_is_refused_while_the_table_sends_calls_to_the_version(plane: Plane) -> None:
    _done(plane.deployments.deploy("m", "1", _spec()))
    _done(plane.deployments.deploy("m", "2", _spec()))
    plane.releases.publish("m", _routes(("1", 100)))
    with pytest.raises(Conflict, match="carries traffic"):
        plane.deployments.undeploy("m", "1")
    assert plane.deployments.is_deployed("m", "1")
    pid = plane.record("2")[0].pid
    plane.deployments.undeploy("m", "2")
    assert not plane.deployments.is_deployed("m", "2")
    assert pid not in plane.orchestrator.processes()
    plane.deployments.undeploy("m", "1", force=True)
    assert plane.orchestrator.processes() == {}


def test_rollback_to_a_table_routing_to_an_undeployed_version_is_refused(plane: Plane) -> None:
    _done(plane.deployments.deploy("m", "1", _spec()))
    _done(plane.deployments.deploy("m", "2", _spec()))
    plane.releases.publish("m", _routes(("1", 100)))
    current = plane.releases.publish("m", _routes(("2", 100)))
    plane.deployments.undeploy("m", "1")
    with pytest.raises(InvalidRequest, match="version '1' of 'm' is not deployed"):
        plane.releases.rollback("m")
    item = plane.store.get("m", group="models")
    assert item is not None and item.revision == current.revision
