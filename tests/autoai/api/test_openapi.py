"""The OpenAPI document of the real app is the contract: the publish, rollback, deploy and scale
bodies list their fields, answers name their models, refusals their shape."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.anyio


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """A schema with its ``$ref`` (and a single-member ``allOf``/``anyOf`` wrapper) followed."""
    while True:
        if "$ref" in schema:
            name = schema["$ref"].removeprefix("#/components/schemas/")
            schema = doc["components"]["schemas"][name]
        elif len(schema.get("allOf", ())) == 1:
            schema = schema["allOf"][0]
        elif "anyOf" in schema and len([s for s in schema["anyOf"] if s != {"type": "null"}]) == 1:
            schema = next(s for s in schema["anyOf"] if s != {"type": "null"})
        else:
            return schema


def _body(doc: dict[str, Any], path: str, method: str = "post") -> dict[str, Any]:
    content = doc["paths"][path][method]["requestBody"]["content"]["application/json"]
    return _resolve(doc, content["schema"])


def _answer(doc: dict[str, Any], path: str, method: str, status: str) -> dict[str, Any]:
    content = doc["paths"][path][method]["responses"][status]["content"]["application/json"]
    return _resolve(doc, content["schema"])


@pytest.fixture
async def doc(client: httpx.AsyncClient) -> dict[str, Any]:
    answer = await client.get("/openapi.json")
    assert answer.status_code == 200, answer.text
    document: dict[str, Any] = answer.json()
    return document


async def test_publish_and_rollback_bodies_list_their_fields(doc: dict[str, Any]) -> None:
    publish = _body(doc, "/api/v1/models/{name}/publish")
    assert set(publish["properties"]) == {
        "routes",
        "sticky_key",
        "shadow",
        "expected_revision",
        "reason",
        "allow_label_change",
    }
    assert publish["required"] == ["routes"]
    route = _resolve(doc, publish["properties"]["routes"]["items"])
    assert {"version", "weight"} <= set(route["properties"])
    shadow = _resolve(doc, publish["properties"]["shadow"])
    assert {"version", "ratio"} <= set(shadow["properties"])
    rollback = _body(doc, "/api/v1/models/{name}/rollback")
    assert set(rollback["properties"]) == {"revision"}


async def test_the_deploy_body_is_the_eas_spec(doc: dict[str, Any]) -> None:
    spec = _body(doc, "/api/v1/models/{name}/versions/{version}/deploy")
    assert {"processor", "blade", "metadata", "token", "name", "model_path"} == set(
        spec["properties"]
    )
    assert spec["additionalProperties"] is False  # misspelt keys are refused
    assert "dotted" in spec["description"]  # EAS's "metadata.instance" keys are folded
    assert spec["not"]["properties"]["processor"] == {"const": "onnx"}  # onnx contradicts blade
    token = _resolve(doc, spec["properties"]["token"])
    assert token["writeOnly"] is True and token["format"] == "password"
    metadata = _resolve(doc, spec["properties"]["metadata"])
    assert {"instance", "port", "cpu", "gpu", "memory", "rpc", "intra_op_threads"} <= set(
        metadata["properties"]
    )
    instance = metadata["properties"]["instance"]
    assert (instance["minimum"], instance["maximum"]) == (1, 16)
    rpc = _resolve(doc, metadata["properties"]["rpc"])
    assert {"batching", "max_batch_size", "max_batch_timeout", "max_queue_size"} <= set(
        rpc["properties"]
    )
    assert all(p.get("description") for p in rpc["properties"].values())
    scale = _body(doc, "/api/v1/models/{name}/versions/{version}/deployment", "patch")
    assert set(_resolve(doc, scale["properties"]["metadata"])["properties"]) == {"instance"}


async def test_answers_and_refusals_are_documented(doc: dict[str, Any]) -> None:
    deployment = _answer(doc, "/api/v1/models/{name}/versions/{version}/deployment", "get", "200")
    assert {"service", "processor", "instances", "endpoints", "spec"} <= set(
        deployment["properties"]
    )
    assert "token" not in _resolve(doc, deployment["properties"]["spec"])["properties"]
    job = _answer(doc, "/api/v1/jobs/{job_id}", "get", "200")
    assert {"id", "state", "progress", "log", "result", "error"} <= set(job["properties"])
    accepted = _answer(doc, "/api/v1/models/{name}/versions/{version}/deploy", "post", "202")
    assert set(accepted["properties"]) == {"job"}
    version = _answer(doc, "/api/v1/models/{name}/versions/{version}", "get", "200")
    assert {"sha256", "signature", "size"} <= set(version["properties"])
    register = doc["paths"]["/api/v1/models"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} == set(register)
    assert _answer(doc, "/healthz", "get", "200")["properties"]["leader"]["type"] == "boolean"
    for path, method in [
        ("/api/v1/models/{name}/versions/{version}/deploy", "post"),
        ("/api/v1/models/{name}/publish", "post"),
    ]:
        refusal = _answer(doc, path, method, "422")
        assert set(refusal["properties"]) == {"error", "detail"}
