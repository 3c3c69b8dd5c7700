"""Deploy through the API: real eas-server processes started detached by the local orchestrator,
registered in the embedded store, called, drained; failures leave nothing behind."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from autoai.api import ControlSettings
from autoai.orchestrators import process_alive
from config_store import open_store
from eas_client import EasClient
from tests.fixtures import onnx_models

from .conftest import AUTH

pytestmark = pytest.mark.anyio


async def _register(client: httpx.AsyncClient, tmp_path: Path, tag: float = 5.0) -> str:
    model = onnx_models.tagged(tmp_path, tag)
    answer = await client.post(
        "/api/v1/models", json={"name": "tagger", "uri": f"file://{model}"}, headers=AUTH
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["version"])


async def _finish(client: httpx.AsyncClient, job: str, timeout: float = 90) -> dict[str, Any]:
    for _ in range(int(timeout / 0.1)):
        doc: dict[str, Any] = (await client.get(f"/api/v1/jobs/{job}")).json()
        if doc["state"] in ("succeeded", "failed"):
            return doc
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job} did not finish")


@pytest.mark.slow
async def test_deploy_call_undeploy(
    client: httpx.AsyncClient, settings: ControlSettings, tmp_path: Path
) -> None:
    version = await _register(client, tmp_path)
    spec = {"processor": "onnx", "metadata": {"instance": 2, "rpc": {"max_batch_size": 8}}}
    answer = await client.post(
        f"/api/v1/models/tagger/versions/{version}/deploy", json=spec, headers=AUTH
    )
    assert answer.status_code == 202, answer.text
    job = await _finish(client, answer.json()["job"])
    assert job["state"] == "succeeded", job
    deployment = (await client.get(f"/api/v1/models/tagger/versions/{version}/deployment")).json()
    assert deployment["service"] == "tagger-1" and deployment["processor"] == "onnx"
    assert [(i["alive"], i["ready"]) for i in deployment["instances"]] == [(True, True)] * 2
    x = np.ones((2, 3), np.float32)
    with open_store(settings.store_url, snapshot_dir=False) as store:
        with EasClient(store=store, service="tagger-1") as eas:
            np.testing.assert_allclose(eas.infer({"x": x})["y"], x + 5)
        again = await client.post(
            f"/api/v1/models/tagger/versions/{version}/deploy", json=spec, headers=AUTH
        )
        assert again.status_code == 409
        refused = await client.delete(f"/api/v1/models/tagger/versions/{version}", headers=AUTH)
        assert refused.status_code == 409  # deployed versions cannot be deleted
        pids = [i["pid"] for i in deployment["instances"]]
        gone = await client.delete(f"/api/v1/models/tagger/versions/{version}/deploy", headers=AUTH)
        assert gone.status_code == 204
        assert store.instances("tagger-1") == []
    assert not any(process_alive(pid) for pid in pids)  # gone (or a zombie awaiting its reaper)
    missing = await client.get(f"/api/v1/models/tagger/versions/{version}/deployment")
    assert missing.status_code == 404


async def test_bad_deploy_requests_are_refused_at_once(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    version = await _register(client, tmp_path)
    url = f"/api/v1/models/tagger/versions/{version}/deploy"
    # The body is a DeploySpec: refused by validation (422), with the field and what it expects.
    cases = [
        ({"processor": "tensorflow"}, "expected 'onnx' or 'blade'"),
        ({"metadata": {"instance": 0}}, "metadata.instance is 0"),
        ({"metadata.instance": 17}, "metadata.instance is 17"),
        ({"processor": "onnx", "blade": True}, "contradicts"),
        ({"metadata": {"cpu": 0}}, "metadata.cpu is 0, expected an integer >= 1"),
        ({"metadata": {"gpu": "all"}}, "metadata.gpu is 'all'"),
        ({"metadata": {"port": 80}}, "metadata.port is 80"),
        ({"metadata": "big"}, "metadata must be an object"),
        ({"blade": {"required": "yes"}}, "blade.required is 'yes'"),
        ({"metadata": {"rpc": {"max_batch_size": 0}}}, "metadata.rpc.max_batch_size is 0"),
        ({"metadata": {"instances": 2}}, "body.metadata.instances: Extra inputs"),
    ]
    for spec, message in cases:
        answer = await client.post(url, json=spec, headers=AUTH)
        assert answer.status_code == 422, answer.text
        assert message in answer.json()["error"], answer.text
    assert (await client.post(url, json=[1, 2], headers=AUTH)).status_code == 422
    unknown = await client.post("/api/v1/models/tagger/versions/9/deploy", json={}, headers=AUTH)
    assert unknown.status_code == 404
    assert (await client.post(url, json={})).status_code == 401
    assert (await client.get("/api/v1/jobs/nope")).status_code == 404


@pytest.mark.slow
async def test_a_deploy_whose_instance_cannot_start_fails_and_leaves_nothing(
    client: httpx.AsyncClient, settings: ControlSettings, tmp_path: Path
) -> None:
    version = await _register(client, tmp_path)
    # well-formed, but the server refuses it when it loads the model: it has no input "tokens"
    spec = {"metadata": {"padding": {"inputs": {"tokens": {"axis": 1}}}}}
    answer = await client.post(
        f"/api/v1/models/tagger/versions/{version}/deploy", json=spec, headers=AUTH
    )
    job = await _finish(client, answer.json()["job"])
    assert job["state"] == "failed"
    assert "exited before it was ready" in job["error"]["error"]
    assert any("unknown input 'tokens'" in line for line in job["error"]["detail"]["log"]), job
    missing = await client.get(f"/api/v1/models/tagger/versions/{version}/deployment")
    assert missing.status_code == 404
    with open_store(settings.store_url, snapshot_dir=False) as store:
        assert store.instances("tagger-1") == []


@pytest.mark.slow
async def test_the_service_token_reaches_the_instances_and_nothing_else(
    client: httpx.AsyncClient, settings: ControlSettings, tmp_path: Path
) -> None:
    version = await _register(client, tmp_path)
    token = "svc-t0ken-not-to-be-echoed"
    spec = {"metadata.instance": 1, "metadata.rpc.max_batch_size": 4, "token": token}
    answer = await client.post(
        f"/api/v1/models/tagger/versions/{version}/deploy", json=spec, headers=AUTH
    )
    assert answer.status_code == 202, answer.text
    job = await _finish(client, answer.json()["job"])
    assert job["state"] == "succeeded", job
    described = await client.get(f"/api/v1/models/tagger/versions/{version}/deployment")
    listed = await client.get("/api/v1/deployments")
    polled = await client.get(f"/api/v1/jobs/{answer.json()['job']}")
    for text in (described.text, listed.text, polled.text):
        assert token not in text
    assert described.json()["spec"]["metadata"]["rpc"]["max_batch_size"] == 4  # dotted, folded
    x = np.ones((1, 3), np.float32)
    with open_store(settings.store_url, snapshot_dir=False) as store:
        item = store.get(f"deployment.tagger.{version}", group="control")
        assert item is not None and token not in item.content.decode()
        with EasClient(store=store, service="tagger-1", token=token) as eas:
            np.testing.assert_allclose(eas.infer({"x": x})["y"], x + 5)
        with EasClient(store=store, service="tagger-1", max_attempts=1) as eas:
            with pytest.raises(Exception, match="401"):
                eas.infer({"x": x})
