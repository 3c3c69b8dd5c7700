"""A failing deploy leaves the published table and the running versions as they were: a model
onnxruntime cannot load, a blade step that fails, a port already taken."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from autoai.api import ControlSettings
from autoai.orchestrators import LocalOrchestrator
from config_store import open_store
from eas_client import EasClient
from tests.fixtures import onnx_models

from .conftest import AUTH

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def _unloadable(directory: Path) -> Path:
    """Valid ONNX with a readable signature, but an operator of a domain no runtime has."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example.nowhere")
    graph = helper.make_graph([node], "unloadable", [x], [y])
    path = directory / "unloadable.onnx"
    onnx.save(
        helper.make_model(
            graph,
            opset_imports=[
                helper.make_opsetid("", 17),
                helper.make_opsetid("com.example.nowhere", 1),
            ],
        ),
        path,
    )
    return path


async def _ok(answer: httpx.Response, code: int = 200) -> Any:
    assert answer.status_code == code, answer.text
    return answer.json()


async def _finish(client: httpx.AsyncClient, job: str) -> dict[str, Any]:
    for _ in range(1200):
        doc: dict[str, Any] = (await client.get(f"/api/v1/jobs/{job}")).json()
        if doc["state"] in ("succeeded", "failed"):
            return doc
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job} did not finish")


async def test_failed_deploys_change_nothing_that_serves(
    client: httpx.AsyncClient, settings: ControlSettings, tmp_path: Path
) -> None:
    for model in (onnx_models.tagged(tmp_path, 1.0), _unloadable(tmp_path)):
        body = {"name": "m", "uri": f"file://{model}"}
        await _ok(await client.post("/api/v1/models", json=body, headers=AUTH), 201)
    for _ in range(2):  # versions 3 and 4: the tagged model again
        body = {"name": "m", "uri": f"file://{onnx_models.tagged(tmp_path, 1.0)}"}
        await _ok(await client.post("/api/v1/models", json=body, headers=AUTH), 201)
    job = await _ok(
        await client.post("/api/v1/models/m/versions/1/deploy", json={}, headers=AUTH), 202
    )
    assert (await _finish(client, job["job"]))["state"] == "succeeded"
    routes = {"routes": [{"version": "1", "weight": 100}]}
    published = await _ok(await client.post("/api/v1/models/m/publish", json=routes, headers=AUTH))
    before = await _ok(await client.get("/api/v1/models/m/versions/1/deployment"))

    bad_data = tmp_path / "wrong-inputs.npz"
    np.savez(bad_data, tokens=np.zeros((2, 8), np.int64))
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    cases = [
        ("2", {}, "exited before it was ready", "Frobnicate"),
        ("3", {"blade": {"test_data": str(bad_data)}}, "test data lacks inputs ['x']", None),
        (
            "4",
            {"metadata": {"port": taken.getsockname()[1]}},
            "exited before it was ready",
            "in use",
        ),
    ]
    try:
        for version, spec, error, logged in cases:
            url = f"/api/v1/models/m/versions/{version}/deploy"
            job = await _ok(await client.post(url, json=spec, headers=AUTH), 202)
            doc = await _finish(client, job["job"])
            assert doc["state"] == "failed", doc
            assert error in doc["error"]["error"], doc["error"]
            if logged is not None:  # the instance's last log lines say why
                assert any(logged in line for line in doc["error"]["detail"]["log"]), doc["error"]
            missing = await client.get(f"/api/v1/models/m/versions/{version}/deployment")
            assert missing.status_code == 404
    finally:
        taken.close()

    with open_store(settings.store_url, snapshot_dir=False) as store:
        table = store.get("m", group="models")
        assert table is not None and table.revision == published["revision"]
        assert store.keys("control") == ["deployment.m.1", "model.m"]
        running = LocalOrchestrator(store, settings.store_url, settings.run_dir).processes()
        assert sorted(running) == sorted(i["pid"] for i in before["instances"])
        with EasClient(store=store, service="m-1") as eas:
            out = eas.infer({"x": np.zeros((1, 4), np.float32)})
        assert float(out["y"][0, 0]) == 1.0
    after = await _ok(await client.get("/api/v1/models/m/versions/1/deployment"))
    assert after["instances"] == before["instances"]
