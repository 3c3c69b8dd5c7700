"""Resizing a pool through the REST API of a real control plane (``autoai up``, its reconciler
on): grown from 1 to 2 instances, then shrunk back to 1 while SDK callers call both pooled
versions, one of them on the instance being removed: it is loaded onto the survivor before that
instance is drained, and no call is lost. Plus the refusals (409, 404, 422, 401)."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner, Result

from autoai.cli import app
from autoai.control import AsyncControlClient, NotFound
from autoai.orchestrators import LocalOrchestrator, process_alive
from autoai.sdk import ModelClient
from config_store import open_store
from config_store.testing import free_ports
from tests.fixtures import onnx_models
from tests.fixtures.system import AUTH, TOKEN, ControlPlane, X, wait

pytestmark = pytest.mark.slow

POOL_TOKEN = "pool-token"


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlane]:
    url = f"sqlite://{tmp_path / 'store.db'}?lease_ttl=2"
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


def _cli(plane: ControlPlane, command: str) -> Result:
    """``autoai COMMAND`` in process against the plane."""
    env = {"AUTOAI_URL": plane.url, "AUTOAI_TOKEN": TOKEN, "COLUMNS": "200"}
    return CliRunner().invoke(app, shlex.split(command), env=env, catch_exceptions=False)


def _cli_error(result: Result) -> str:
    """The one stderr line of a command that failed (exit code 2)."""
    assert result.exit_code == 2, f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
    (line,) = result.stderr.strip().splitlines()
    return line


async def _scale_unknown(url: str) -> None:
    async with AsyncControlClient(url, token=TOKEN) as control:
        with pytest.raises(NotFound):
            await control.scale_pool("nope", 2)


def _hosts(plane: ControlPlane, version: str) -> list[str]:
    deployment = plane.call("GET", f"/api/v1/models/m/versions/{version}/deployment")
    return list(deployment["pooled"]["hosts"])


def test_pool_grows_and_shrinks_without_losing_calls(plane: ControlPlane, tmp_path: Path) -> None:
    plane.wait(plane.leads, 30, "the control plane to lead")
    for tag in (1.0, 2.0):
        uri = f"file://{onnx_models.tagged(tmp_path, tag)}"
        plane.call("POST", "/api/v1/models", 201, json={"name": "m", "uri": uri})
    spec = {"token": POOL_TOKEN, "metadata": {"pool": "p", "pool_instances": 1}}
    plane.deploy("1", spec)

    scale = f"{plane.url}/api/v1/pools/p/scale"
    assert httpx.post(scale, json={"instances": 2}).status_code == 401
    for body in ({"instances": 0}, {"instances": "2"}, {"instances": 2, "x": 1}, {}):
        assert httpx.post(scale, json=body, headers=AUTH).status_code == 422, body
    unknown = httpx.post(
        f"{plane.url}/api/v1/pools/nope/scale", json={"instances": 2}, headers=AUTH
    )
    assert unknown.status_code == 404
    assert _cli_error(_cli(plane, "pools scale nope 2")) == "error: no pool 'nope' (HTTP 404)"
    asyncio.run(_scale_unknown(plane.url))

    grown = _cli(plane, "pools scale p 2 --json")  # grow: a second, empty instance
    assert grown.exit_code == 0, grown.stdout + grown.stderr
    assert json.loads(grown.stdout)["state"] == "succeeded"
    pool = plane.call("GET", "/api/v1/pools/p")
    assert pool["size"] == 2 and len(pool["instances"]) == 2
    assert all(i["alive"] and i["ready"] for i in pool["instances"])
    first, second = pool["instances"]  # shrinking keeps the first

    plane.call("PATCH", "/api/v1/models/m/versions/1/deployment", 202,
               json={"metadata": {"instance": 2}})  # fmt: skip
    plane.wait(lambda: len(_hosts(plane, "1")) == 2, 30, "version 1 on both instances")
    refused = httpx.post(scale, json={"instances": 1}, headers=AUTH)
    assert refused.status_code == 409, refused.text
    assert "m/1" in refused.json()["error"] and refused.json()["detail"]["deployments"] == {
        "m/1": 2
    }
    line = _cli_error(_cli(plane, "pools scale p 1"))
    assert line.startswith("error: pool 'p' cannot shrink to 1") and "m/1" in line, line
    job = plane.control.scale("m", "1", 1)
    plane.control.wait_job(job, timeout=30)
    plane.deploy("2", {"token": POOL_TOKEN, "metadata": {"pool": "p"}})  # the emptier instance
    on_second = [v for v in ("1", "2") if _hosts(plane, v) == [f"127.0.0.1:{second['port']}"]]
    assert on_second, (first, second, _hosts(plane, "1"), _hosts(plane, "2"))
    routes = [{"version": "1", "weight": 50}, {"version": "2", "weight": 50}]
    plane.call("POST", "/api/v1/models/m/publish", json={"routes": routes})

    store = open_store(plane.process.store_url, snapshot_dir=False)
    sdk = ModelClient(store, token=POOL_TOKEN, registry=CollectorRegistry())
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    stop = threading.Event()

    def count(outcome: str) -> None:
        with lock:
            outcomes[outcome] += 1

    def call() -> None:  # each call retried until it succeeds (at most 30 s): none may be lost
        while not stop.is_set():
            deadline = time.monotonic() + 30
            while True:
                try:
                    count(f"v{round(float(sdk.predict('m', X)['y'][0, 0]))}")
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
        wait(lambda: outcomes["v1"] > 10 and outcomes["v2"] > 10, 30, "calls to both versions")
        # shrink: what the second hosts is loaded onto the first, then it stops
        plane.control.wait_job(plane.control.scale_pool("p", 1), timeout=60)
        assert not process_alive(second["pid"])
        before = Counter(outcomes)
        wait(
            lambda: outcomes["v1"] > before["v1"] + 10 and outcomes["v2"] > before["v2"] + 10,
            30,
            "both versions served by the one instance left",
        )
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        sdk.close()
        store.close()
    lost = {k: n for k, n in outcomes.items() if k.startswith("lost")}
    assert not lost, outcomes
    print(f"outcomes: {dict(outcomes)}")

    pool = plane.call("GET", "/api/v1/pools/p")
    assert pool["size"] == 1 and [i["pid"] for i in pool["instances"]] == [first["pid"]]
    address = f"127.0.0.1:{first['port']}"
    for version in on_second:  # moved before the removed instance stopped, and recorded
        deployment = plane.call("GET", f"/api/v1/models/m/versions/{version}/deployment")
        assert deployment["pooled"]["hosts"] == [address]
        move = deployment["pooled"]["moves"][-1]
        assert move["added"] == [address] and "scaled from 2 to 1" in move["reason"], move
    assert _hosts(plane, "1") == _hosts(plane, "2") == [address]
    one = plane.call("GET", "/api/v1/models/m/versions/1/deployment")  # its creator's spec
    assert one["spec"]["metadata"] == {"pool": "p", "pool_instances": 1, "instance": 1}
