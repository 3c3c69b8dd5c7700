"""The models API through the real app (lifespan, embedded store, repository on disk)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures import onnx_models

from .conftest import AUTH, TOKEN

pytestmark = pytest.mark.anyio


async def test_upload_list_show_delete(client: httpx.AsyncClient, tmp_path: Path) -> None:
    model = onnx_models.classifier(tmp_path)
    with model.open("rb") as f:
        created = await client.post(
            "/api/v1/models", data={"name": "intent-cls"}, files={"file": f}, headers=AUTH
        )
    assert created.status_code == 201, created.text
    assert created.json()["version"] == "1"
    assert created.json()["signature"]["inputs"][0]["datatype"] == "FP32"
    by_uri = await client.post(
        "/api/v1/models", json={"name": "intent-cls", "uri": f"file://{model}"}, headers=AUTH
    )
    assert by_uri.status_code == 201 and by_uri.json()["version"] == "2"
    listed = (await client.get("/api/v1/models")).json()["models"]
    assert [(m["name"], len(m["versions"])) for m in listed] == [("intent-cls", 2)]
    shown = (await client.get("/api/v1/models/intent-cls/versions/2")).json()
    assert shown["source"] == f"file://{model}"
    deleted = await client.delete("/api/v1/models/intent-cls/versions/1", headers=AUTH)
    assert deleted.status_code == 204
    model_doc = (await client.get("/api/v1/models/intent-cls")).json()
    assert [v["version"] for v in model_doc["versions"]] == ["2"]


async def test_writes_need_the_admin_token(client: httpx.AsyncClient) -> None:
    body = {"name": "m", "uri": "file:///nowhere.onnx"}
    for headers, code in (
        ({}, 401),
        ({"Authorization": TOKEN}, 401),
        ({"Authorization": "Bearer wrong"}, 403),
    ):
        answer = await client.post("/api/v1/models", json=body, headers=headers)
        assert answer.status_code == code
        assert "admin token" in answer.json()["error"]
    assert (await client.delete("/api/v1/models/m/versions/1")).status_code == 401


BAD: list[tuple[dict[str, Any], str]] = [
    ({"json": {"name": "m"}}, "needs 'name' and 'uri'"),
    ({"json": {"name": "Bad Name", "uri": "file:///x"}}, "cannot read"),
    ({"json": {"name": "m", "uri": "ftp://x/y.onnx"}}, "unsupported URI scheme"),
    ({"content": b"{not json", "type": "application/json"}, "expected"),
    (
        {"data": {"name": "m"}, "files": {"file": ("m.onnx", b"garbage")}},
        "m.onnx is not an ONNX model",
    ),
    ({"data": {"name": "m"}, "files": {"other": ("m.onnx", b"x")}}, "'file'"),
]


@pytest.mark.parametrize(("case", "message"), BAD)
async def test_bad_registrations_are_400_with_a_reason(
    client: httpx.AsyncClient, case: dict[str, Any], message: str
) -> None:
    headers = dict(AUTH)
    if "type" in case:
        headers["content-type"] = case["type"]
    answer = await client.post(
        "/api/v1/models",
        headers=headers,
        json=case.get("json"),
        content=case.get("content"),
        data=case.get("data"),
        files=case.get("files"),
    )
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"]
    assert (await client.get("/api/v1/models")).json()["models"] == []


async def test_unknown_models_and_versions_are_404(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    assert (await client.get("/api/v1/models/nope")).status_code == 404
    await client.post(
        "/api/v1/models",
        json={"name": "m", "uri": f"file://{onnx_models.identity(tmp_path)}"},
        headers=AUTH,
    )
    answer = await client.get("/api/v1/models/m/versions/7")
    assert answer.status_code == 404
    assert answer.json()["detail"]["versions"] == ["1"]
    health = (await client.get("/healthz")).json()
    assert health["status"] == "ok" and health["leader"] is True and health["store"] == "connected"
