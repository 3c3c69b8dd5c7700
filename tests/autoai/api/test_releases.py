"""End to end through REST on the embedded store: register two versions, deploy both, publish
90/10, SDK calls split as published, promote, roll back; bad publishes change nothing."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from autoai.api import ControlSettings
from autoai.sdk import ModelClient
from tests.fixtures import onnx_models

from .conftest import AUTH

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

X = {"x": np.zeros((1, 4), np.float32)}


async def _ok(answer: httpx.Response, code: int = 200) -> dict[str, Any]:
    assert answer.status_code == code, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def _deploy(client: httpx.AsyncClient, version: str) -> None:
    url = f"/api/v1/models/tagger/versions/{version}/deploy"
    job = (await _ok(await client.post(url, json={}, headers=AUTH), 202))["job"]
    for _ in range(900):
        doc = (await client.get(f"/api/v1/jobs/{job}")).json()
        if doc["state"] != "running" and doc["state"] != "pending":
            assert doc["state"] == "succeeded", doc
            return
        await asyncio.sleep(0.1)
    raise AssertionError("deploy did not finish")


async def _revision(sdk: ModelClient, revision: int, timeout: float = 30) -> None:
    """Wait, bounded, until the SDK routes by ``revision`` (its watch delivers it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while sdk.routes("tagger").revision != revision:
        assert loop.time() < deadline, f"the SDK never saw revision {revision}"
        await asyncio.sleep(0.01)


def _split(sdk: ModelClient, calls: int = 200) -> Counter[int]:
    return Counter(round(float(sdk.predict("tagger", X)["y"][0, 0])) for _ in range(calls))


async def test_register_deploy_publish_route_promote_roll_back(
    client: httpx.AsyncClient, settings: ControlSettings, tmp_path: Path
) -> None:
    for tag in (1.0, 2.0):
        model = onnx_models.tagged(tmp_path, tag)
        body = {"name": "tagger", "uri": f"file://{model}"}
        await _ok(await client.post("/api/v1/models", json=body, headers=AUTH), 201)
    for version in ("1", "2"):
        await _deploy(client, version)
    url = "/api/v1/models/tagger"
    routes = {"routes": [{"version": "1", "weight": 90}, {"version": "2", "weight": 10}]}
    first = await _ok(await client.post(f"{url}/publish", json=routes, headers=AUTH))
    table = first["table"]
    assert [(r["version"], r["service"], r["processor"]) for r in table["routes"]] == [
        ("1", "tagger-1", "onnx"),
        ("2", "tagger-2", "onnx"),
    ]
    sdk = await asyncio.to_thread(ModelClient, settings.store_url, registry=CollectorRegistry())
    try:
        split = await asyncio.to_thread(_split, sdk)
        assert split == Counter({1: 180, 2: 20})
        promote = {"routes": [{"version": "2", "weight": 100}], "reason": "canary healthy"}
        stale = {**promote, "expected_revision": first["revision"] + 5}
        assert (await client.post(f"{url}/publish", json=stale, headers=AUTH)).status_code == 409
        second = await _ok(await client.post(f"{url}/publish", json=promote, headers=AUTH))
        await _revision(sdk, second["revision"])
        assert await asyncio.to_thread(_split, sdk, 20) == Counter({2: 20})
        back = await _ok(await client.post(f"{url}/rollback", json={}, headers=AUTH))
        await _revision(sdk, back["revision"])
        assert await asyncio.to_thread(_split, sdk) == Counter({1: 180, 2: 20})
    finally:
        await asyncio.to_thread(sdk.close)
    releases = (await client.get(f"{url}/releases")).json()["releases"]
    assert [r["routes"] for r in releases] == [
        {"1": 90, "2": 10},
        {"2": 100},
        {"1": 90, "2": 10},
    ]
    assert releases[0]["reason"] == f"rollback to revision {first['revision']}"
    assert releases[1]["reason"] == "canary healthy"


async def test_bad_publishes_change_nothing(client: httpx.AsyncClient, tmp_path: Path) -> None:
    model = onnx_models.tagged(tmp_path, 1.0)
    other = onnx_models.identity(tmp_path / "other", dtype="INT64")
    for path in (model, other):
        body = {"name": "tagger", "uri": f"file://{path}"}
        await _ok(await client.post("/api/v1/models", json=body, headers=AUTH), 201)
    await _deploy(client, "1")
    await _deploy(client, "2")
    url = "/api/v1/models/tagger/publish"
    one = {"version": "1", "weight": 1}
    cases = [
        # malformed bodies: the schema refuses them (422, the field named) before the service
        ({"routes": []}, 422, "body.routes: List should have at least 1 item"),
        ({"routes": [one, {"version": "1", "weight": 2}]}, 422, "may appear once in routes"),
        ({"routes": [{"version": "1", "weight": 0}]}, 422, "no route has a weight > 0"),
        ({"routes": [{"version": "1", "weight": -1}]}, 422, "greater than or equal to 0"),
        ({"routes": [{"version": "1", "weight": True}]}, 422, "valid integer"),
        ({"routes": [one], "shadow": {"version": "1"}}, 422, "body.shadow.ratio: Field required"),
        ({"routes": [one], "expected_revision": "x"}, 422, "body.expected_revision"),
        ({"routes": [one], "sticky": "user"}, 422, "body.sticky: Extra inputs"),
        # well-formed, refused by what is deployed (400) or by the route-table rules
        ({"routes": [{"version": "3", "weight": 1}]}, 400, "'3' of 'tagger' is not deployed"),
        ({"routes": [one, {"version": "2", "weight": 1}]}, 400, "other inputs"),
        (
            {"routes": [one], "shadow": {"version": "1", "ratio": 0.5}},
            400,
            "the route table is invalid: shadow.version: route '1' has weight 1",
        ),
    ]
    for request, status, message in cases:
        answer = await client.post(url, json=request, headers=AUTH)
        assert answer.status_code == status, (request, answer.text)
        assert message in answer.json()["error"], (request, answer.json())
    bad_rollback = {"revision": "1"}
    answer = await client.post("/api/v1/models/tagger/rollback", json=bad_rollback, headers=AUTH)
    assert answer.status_code == 422 and "body.revision" in answer.json()["error"]
    assert (await client.get("/api/v1/models/tagger/releases")).json()["releases"] == []
    assert (
        await client.post("/api/v1/models/tagger/rollback", json={}, headers=AUTH)
    ).status_code == 404
