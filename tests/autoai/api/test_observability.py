"""/metrics and Prometheus service discovery: the pure parts (instance states, target groups, job
and publish accounting) on their own, then a real deploy + publish moving the scraped values."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from autoai.api import ControlSettings, create_app
from autoai.api._metrics import ControlMetrics, instance_counts, instance_state
from autoai.api.routers.observability import target_groups
from autoai.errors import InvalidRequest
from autoai.jobs import Job, JobRunner
from autoai.schema import Deployment, JobResult, LocalInstanceHealth, PodHealth
from config_store import Instance
from config_store.testing import ZooKeeperServer
from tests.fixtures import onnx_models

from .conftest import AUTH

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(text: str) -> tuple[dict[str, str], Samples]:
    """Metric family types by name, and every sample by (name, sorted labels)."""
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return types, samples


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _instance(alive: bool, ready: bool) -> LocalInstanceHealth:
    return LocalInstanceHealth(pid=1, alive=alive, ready=ready)


def _deployment(name: str, version: str, *states: tuple[bool, bool]) -> Deployment:
    return Deployment(
        name=name,
        version=version,
        processor="onnx",
        service=f"{name}-{version}",
        model_sha256="0" * 64,
        created=0.0,
        instances=[_instance(alive, ready) for alive, ready in states],
        endpoints=[],
    )


def test_instance_states() -> None:
    assert instance_state(_instance(True, True)) == "ready"
    assert instance_state(_instance(False, True)) == "ready"  # registered is what counts
    assert instance_state(_instance(True, False)) == "alive_not_ready"
    assert instance_state(_instance(False, False)) == "dead"
    pod = PodHealth(pod=None, ip="10.0.0.1", port=8000, alive=False, ready=False)
    assert instance_state(pod) == "dead"
    counts = instance_counts(
        [_deployment("a", "1", (True, True), (True, True), (False, False)), _deployment("b", "2")]
    )
    assert counts == {
        ("a", "1", "onnx", "ready"): 2,
        ("a", "1", "onnx", "alive_not_ready"): 0,
        ("a", "1", "onnx", "dead"): 1,
        ("b", "2", "onnx", "ready"): 0,
        ("b", "2", "onnx", "alive_not_ready"): 0,
        ("b", "2", "onnx", "dead"): 0,
    }


def test_target_groups_one_per_deployment_with_instances() -> None:
    deployments = [_deployment("a", "1"), _deployment("b", "2"), _deployment("c", "3")]
    registered = {
        "a-1": [Instance("a-1", "h:2", "h", 2), Instance("a-1", "h:1", "h", 1)],
        "c-3": [Instance("c-3", "[::1]:5", "::1", 5)],
    }
    assert [g.model_dump() for g in target_groups(deployments, registered)] == [
        {
            "targets": ["h:1", "h:2"],
            "labels": {
                "model": "a",
                "version": "1",
                "processor": "onnx",
                "service": "a-1",
                "__metrics_path__": "/metrics",
            },
        },
        {
            "targets": ["[::1]:5"],
            "labels": {
                "model": "c",
                "version": "3",
                "processor": "onnx",
                "service": "c-3",
                "__metrics_path__": "/metrics",
            },
        },
    ]


def test_job_and_publish_accounting_on_a_real_job_runner() -> None:
    deployments = [_deployment("a", "1", (True, False))]
    runner: JobRunner
    metrics = ControlMetrics(
        CollectorRegistry(),
        jobs=lambda: runner.counts(),
        deployments=lambda: deployments,
        version="9.9",
    )
    runner = JobRunner(on_finish=metrics.job_finished)

    def slow(job: Job) -> JobResult:
        time.sleep(0.05)
        return JobResult()

    def broken(job: Job) -> JobResult:
        raise InvalidRequest("no")

    for work in (slow, slow, broken):
        runner.submit("deploy", "d", work)
    runner.submit("optimize", "o", slow)
    runner.wait(timeout=10)
    with metrics.publishing("publish"):
        pass
    with pytest.raises(InvalidRequest), metrics.publishing("rollback"):
        raise InvalidRequest("nothing to roll back to")
    with pytest.raises(OSError), metrics.publishing("publish"):
        raise OSError("store gone")

    types, samples = _scrape(generate_latest(metrics.registry).decode())
    assert _value(samples, "autoai_deploys_total", outcome="succeeded") == 2
    assert _value(samples, "autoai_deploys_total", outcome="failed") == 1
    assert _value(samples, "autoai_deploy_duration_seconds_count") == 3  # deploys only
    assert _value(samples, "autoai_deploy_duration_seconds_sum") >= 0.1
    publishes = {
        (a, o): _value(samples, "autoai_publishes_total", action=a, outcome=o)
        for a in ("publish", "rollback")
        for o in ("published", "rejected", "failed")
    }
    assert publishes == {
        ("publish", "published"): 1,
        ("publish", "rejected"): 0,
        ("publish", "failed"): 1,
        ("rollback", "published"): 0,
        ("rollback", "rejected"): 1,
        ("rollback", "failed"): 0,
    }
    assert _value(samples, "autoai_publish_duration_seconds_count", action="publish") == 2
    assert _value(samples, "autoai_jobs", kind="deploy", state="succeeded") == 2
    assert _value(samples, "autoai_jobs", kind="deploy", state="failed") == 1
    assert _value(samples, "autoai_jobs", kind="optimize", state="succeeded") == 1
    assert ("autoai_jobs", (("kind", "deploy"), ("state", "pending"))) in samples
    assert _value(samples, "autoai_instances", **_labels("a", "1", "alive_not_ready")) == 1
    assert _value(samples, "autoai_deployments") == 1
    assert _value(samples, "autoai_build_info", version="9.9", insecure="false") == 1
    assert types["autoai_instances"] == "gauge" and types["autoai_deploys"] == "counter"


def test_a_failing_on_finish_neither_fails_the_job_nor_hangs_its_waiters(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def observer(job: Job) -> None:
        raise RuntimeError("observer bug")

    runner = JobRunner(on_finish=observer)
    job = runner.submit("deploy", "d", lambda job: JobResult(report={"ok": True}))
    assert job.done.wait(10)
    assert job.state == "succeeded" and job.result == JobResult(report={"ok": True})
    assert "on_finish failed" in caplog.text


def _labels(model: str, version: str, state: str) -> dict[str, str]:
    return {"model": model, "version": version, "processor": "onnx", "state": state}


async def _ok(answer: httpx.Response, code: int = 200) -> Any:
    assert answer.status_code == code, answer.text
    return answer.json()


async def _scrape_app(client: httpx.AsyncClient) -> tuple[dict[str, str], Samples]:
    answer = await client.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return _scrape(answer.text)


@pytest.mark.anyio
async def test_metric_families_types_and_labels_before_anything_happened(
    client: httpx.AsyncClient,
) -> None:
    types, samples = await _scrape_app(client)
    ours = {
        n: t for n, t in types.items() if n.startswith("autoai_") and not n.endswith("_created")
    }
    assert ours == {
        "autoai_build_info": "gauge",
        "autoai_deploy_duration_seconds": "histogram",
        "autoai_deploys": "counter",
        "autoai_deployments": "gauge",
        "autoai_instances": "gauge",
        "autoai_jobs": "gauge",
        "autoai_publish_duration_seconds": "histogram",
        "autoai_publishes": "counter",
        "autoai_store_up": "gauge",
    }
    assert _value(samples, "autoai_deploys_total", outcome="failed") == 0
    assert ("autoai_deploys_total", (("outcome", "succeeded"),)) in samples
    assert _value(samples, "autoai_deployments") == 0
    assert _value(samples, "autoai_store_up") == 1
    assert [labels for name, labels in samples if name == "autoai_build_info"] == [
        (("insecure", "false"), ("version", "0.1.0"))
    ]
    assert not any(name.startswith(("python_", "process_")) for name, _ in samples)
    discovery = await client.get("/api/v1/sd/prometheus")
    assert discovery.status_code == 200 and discovery.json() == []  # 200 with [], as HTTP SD wants
    assert discovery.headers["content-type"] == "application/json"


@pytest.mark.anyio
@pytest.mark.slow
async def test_a_deploy_and_a_publish_move_the_metrics_and_appear_in_discovery(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    model = onnx_models.tagged(tmp_path, 1.0)
    body = {"name": "tagger", "uri": f"file://{model}"}
    await _ok(await client.post("/api/v1/models", json=body, headers=AUTH), 201)
    spec = {"processor": "onnx", "metadata": {"instance": 1}}
    url = "/api/v1/models/tagger/versions/1/deploy"
    job = (await _ok(await client.post(url, json=spec, headers=AUTH), 202))["job"]
    for _ in range(900):
        doc = await _ok(await client.get(f"/api/v1/jobs/{job}"))
        if doc["state"] in ("succeeded", "failed"):
            break
        await asyncio.sleep(0.1)
    assert doc["state"] == "succeeded", doc
    routes = {"routes": [{"version": "1", "weight": 100}]}
    await _ok(await client.post("/api/v1/models/tagger/publish", json=routes, headers=AUTH))
    refused = await client.post("/api/v1/models/tagger/rollback", json={}, headers=AUTH)
    assert refused.status_code == 404  # nothing earlier: a rejected rollback

    _, samples = await _scrape_app(client)
    assert _value(samples, "autoai_deploys_total", outcome="succeeded") == 1
    assert _value(samples, "autoai_deploys_total", outcome="failed") == 0
    assert _value(samples, "autoai_deploy_duration_seconds_count") == 1
    assert _value(samples, "autoai_deploy_duration_seconds_sum") > 0
    assert _value(samples, "autoai_publishes_total", action="publish", outcome="published") == 1
    assert _value(samples, "autoai_publishes_total", action="rollback", outcome="rejected") == 1
    assert _value(samples, "autoai_publish_duration_seconds_count", action="publish") == 1
    assert _value(samples, "autoai_jobs", kind="deploy", state="succeeded") == 1
    assert _value(samples, "autoai_jobs", kind="deploy", state="running") == 0
    assert _value(samples, "autoai_deployments") == 1
    assert _value(samples, "autoai_instances", **_labels("tagger", "1", "ready")) == 1
    assert _value(samples, "autoai_instances", **_labels("tagger", "1", "dead")) == 0

    deployment = await _ok(await client.get("/api/v1/models/tagger/versions/1/deployment"))
    groups = await _ok(await client.get("/api/v1/sd/prometheus"))
    assert groups == [
        {
            "targets": [e.removeprefix("http://") for e in deployment["endpoints"]],
            "labels": {
                "model": "tagger",
                "version": "1",
                "processor": "onnx",
                "service": "tagger-1",
                "__metrics_path__": "/metrics",
            },
        }
    ]
    # the target is a model server whose own /metrics Prometheus would scrape
    async with httpx.AsyncClient(timeout=10) as direct:
        answer = await direct.get(f"http://{groups[0]['targets'][0]}/metrics")
    assert answer.status_code == 200 and "eas_requests" in answer.text


@pytest.mark.anyio
@pytest.mark.zk
@pytest.mark.slow
async def test_store_down_is_a_503_and_metrics_still_answer(
    zk_own_server: ZooKeeperServer, settings: ControlSettings, tmp_path: Path
) -> None:
    url = f"zk://{zk_own_server.address}/c{uuid.uuid4().hex[:8]}?session_timeout=4&write_timeout=1"
    app = create_app(settings.model_copy(update={"store_url": url}))
    model = onnx_models.tagged(tmp_path, 1.0)
    body = {"name": "tagger", "uri": f"file://{model}"}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://control") as client:
            await _ok(await client.post("/api/v1/models", json=body, headers=AUTH), 201)
            await _ok(await client.get("/api/v1/models/tagger/versions/1"))  # a local copy: v1
            await _ok(await client.post("/api/v1/models", json=body, headers=AUTH), 201)
            store = app.state.services.store
            zk_own_server.stop()
            for _ in range(600):
                if store.state != "connected":
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the store never saw ZooKeeper go away (30 s)")
            stale_copy = await client.post(
                "/api/v1/models/tagger/versions/2/deploy", json={}, headers=AUTH
            )  # the local copy lacks version 2: that is the outage, not a 404
            assert stale_copy.status_code == 503, stale_copy.text
            assert "the config store is unreachable" in stale_copy.json()["error"]
            for answer in (
                await client.get("/api/v1/models"),
                await client.get("/api/v1/deployments"),
                await client.post("/api/v1/models", json=body, headers=AUTH),
            ):
                assert answer.status_code == 503, answer.text
                assert answer.json()["error"].startswith("the config store is unavailable")
                assert set(answer.json()) == {"error", "detail"}
                assert answer.headers["retry-after"] == "5"
            _, samples = await _scrape_app(client)
            assert _value(samples, "autoai_store_up") == 0
            assert ("autoai_jobs", (("kind", "deploy"), ("state", "failed"))) in samples

            zk_own_server.start()
            assert store.wait_connected(30)
            models = await _ok(await client.get("/api/v1/models"))
            assert [m["name"] for m in models["models"]] == ["tagger"]  # nothing was lost
            assert [v["version"] for v in models["models"][0]["versions"]] == [
                "1",
                "2",
            ]  # nor added
            _, samples = await _scrape_app(client)
            assert _value(samples, "autoai_store_up") == 1
