"""The table of hosted model versions (``ModelHost``) and the instance's HTTP face
(``RepositoryApp``) in process, on real ONNX files: states and the index, which version a name
finds, a failed load or reload, replacement, unloading, and the moments a process cannot show
deterministically: a model held in its load answers 503 + Retry-After while the others serve, and
an unload waits for the batch in flight.

The moments are held by ``GatedProcessor``: the real onnx processor whose ``load`` (and, when
asked, ``run``) waits on a ``threading.Event`` the test sets. Apps are driven through
``httpx.ASGITransport``, on the test's own event loop."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from autoai.testing import models
from eas_server._errors import ModelNotFound, Unavailable
from eas_server._settings import ServerSettings
from eas_server.processors import register_processor
from eas_server.processors.onnx import OnnxProcessor
from eas_server.repository import LoadFailed, ModelHost, ModelState, RepositoryApp

TOKEN = "host-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GATED = "gated-for-tests"
"""The processor name ``GatedProcessor`` is registered under (by the ``gates`` fixture)."""
X = [[0.5, 1.0, 1.5, 2.0]]


@dataclass
class Gates:
    """What a ``GatedProcessor`` waits on, and what it says it reached."""

    load: threading.Event = field(default_factory=threading.Event)
    """Set: loads go on (cleared by the test to hold them)."""
    run: threading.Event = field(default_factory=threading.Event)
    """Set: batches run (warm-up runs are never held)."""
    loading: threading.Event = field(default_factory=threading.Event)
    """A load started and waits on ``load``."""
    running: threading.Event = field(default_factory=threading.Event)
    """A batch started and waits on ``run``."""


class GatedProcessor(OnnxProcessor):
    """The onnx processor, held at ``load`` and at ``run`` until the test's gates open."""

    def __init__(self, model_path: str, *, gates: Gates, **options: Any) -> None:
        super().__init__(model_path, **options)
        self.gates = gates
        self.warm = False

    def load(self) -> None:
        self.gates.loading.set()
        assert self.gates.load.wait(30), "the test never let the load go on"
        super().load()

    def warmup(self) -> None:
        super().warmup()
        self.warm = True

    def run(
        self, inputs: dict[str, np.ndarray], worker: int, outputs: frozenset[str] | None = None
    ) -> Any:
        if self.warm:
            self.gates.running.set()
            assert self.gates.run.wait(30), "the test never let the batch run"
        return super().run(inputs, worker, outputs)


@pytest.fixture
def gates() -> Iterator[Gates]:
    """Gates open by default; ``--processor gated-for-tests`` (or ``"processor"`` in a load's
    config) builds a ``GatedProcessor`` on them."""
    opened = Gates()
    opened.load.set()
    opened.run.set()
    register_processor(GATED, lambda path, **options: GatedProcessor(path, gates=opened, **options))
    yield opened
    opened.load.set()  # nothing stays held past the test
    opened.run.set()


def _onnx(root: Path, name: str, version: str, tag: float) -> Path:
    directory = root / name / version
    directory.mkdir(parents=True)
    return models.tagged(directory, tag).rename(directory / "model.onnx")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """alpha 1 (y = x + 1) and 2 (x + 2), beta 1 (x + 10), and broken 1: bytes that are no ONNX."""
    root = tmp_path / "repo"
    _onnx(root, "alpha", "1", 1.0)
    _onnx(root, "alpha", "2", 2.0)
    _onnx(root, "beta", "1", 10.0)
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"\x00\x01 not a protobuf \xff" * 8)
    return root


def _host(root: Path) -> ModelHost:
    """A host as eas-server builds one, with the token, one thread per session, and batches on
    worker threads (a held batch must not hold the event loop)."""
    base = ServerSettings(
        model_repository=str(root),
        token=TOKEN,
        intra_op_threads=1,
        handoff="threads",
        max_batch_timeout_ms=1,
        drain_timeout_s=20,
    )
    return ModelHost(base, CollectorRegistry())


def _run(body: Callable[[ModelHost, httpx.AsyncClient], Awaitable[None]], root: Path) -> None:
    """Run ``body`` on a fresh event loop with a started host and a client of its app; the host
    is closed whatever happens."""

    async def main() -> None:
        host = _host(root)
        app = RepositoryApp(host, token=TOKEN)
        try:
            await host.load_repository()
            host.start()
            app.ready = True
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://host") as client:
                await body(host, client)
        finally:
            await host.close()

    asyncio.run(main())


async def _until(done: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll ``done`` on the event loop (which keeps serving meanwhile), bounded."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        await asyncio.sleep(0.005)


async def _infer(client: httpx.AsyncClient, model: str, version: str | None = None) -> float:
    """The tag of the version that answered (y - x), asserting a 200."""
    response = await _call(client, model, version)
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    return round(float(np.mean(np.array(output["data"]) - np.array(X).ravel())), 3)


async def _call(
    client: httpx.AsyncClient, model: str, version: str | None = None
) -> httpx.Response:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": X}]}
    return await client.post(path, json=body, headers=AUTH)


async def _index(client: httpx.AsyncClient, **body: Any) -> list[dict[str, str]]:
    response = await client.post("/v2/repository/index", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    return list(response.json())


def _states(index: list[dict[str, str]]) -> dict[tuple[str, str], str]:
    return {(e["name"], e["version"]): e["state"] for e in index}


def _config(**doc: Any) -> dict[str, Any]:
    """A load body carrying ``doc`` as its service JSON (a string, as Triton's clients send)."""
    return {"parameters": {"config": json.dumps(doc)}}


def test_index_find_and_unload(repo: Path) -> None:
    async def body(host: ModelHost, client: httpx.AsyncClient) -> None:
        index = await _index(client)
        assert _states(index) == {
            ("alpha", "2"): "READY",  # only the highest version loads at start
            ("beta", "1"): "READY",
            ("broken", "1"): "UNAVAILABLE",
        }
        reason = next(e["reason"] for e in index if e["name"] == "broken")
        assert "is not an ONNX model" in reason
        assert _states(await _index(client, ready=True)) == {
            ("alpha", "2"): "READY",
            ("beta", "1"): "READY",
        }
        assert (await _infer(client, "alpha"), await _infer(client, "beta")) == (2.0, 10.0)

        await host.load("alpha", json.dumps({"version": "1"}))
        assert host.find("alpha", None).model.version == "2"  # the highest ready version
        assert (await _infer(client, "alpha", "1"), await _infer(client, "alpha")) == (1.0, 2.0)
        with pytest.raises(ModelNotFound, match="model alpha version 3 is not loaded here"):
            host.find("alpha", "3")
        with pytest.raises(ModelNotFound, match="model nope is not loaded here"):
            host.find("nope", None)
        missing = await _call(client, "nope")
        assert missing.status_code == 404 and "not loaded here" in missing.json()["error"]

        await host.unload("alpha", "2")
        assert await _infer(client, "alpha") == 1.0  # the one left answers unversioned calls
        assert (await _call(client, "alpha", "2")).status_code == 404
        gone = await client.post("/v2/repository/models/alpha/unload", headers=AUTH)
        assert (gone.status_code, gone.json()) == (200, {})
        assert _states(await _index(client))[("alpha", "2")] == "UNAVAILABLE"
        assert {e["name"]: e["reason"] for e in await _index(client)}["alpha"] == "unloaded"
        again = await client.post("/v2/repository/models/alpha/unload", headers=AUTH)
        assert again.status_code == 404 and "not loaded here" in again.json()["error"]
        assert await _infer(client, "beta") == 10.0

    _run(body, repo)


def test_a_failed_reload_keeps_the_loaded_version_and_a_good_one_replaces_it(
    repo: Path, tmp_path: Path
) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"PK\x03\x04 a zip, not ONNX")
    replacement = models.tagged(tmp_path / "v2-again", 5.0)

    async def body(host: ModelHost, client: httpx.AsyncClient) -> None:
        loaded = host.find("alpha", "2")
        failures = {
            "is not an ONNX model": _config(version="2", model_path=str(corrupt)),
            "unknown processor 'nope'": _config(version="2", processor="nope"),
            "model_path /nowhere.onnx does not exist": _config(model_path="/nowhere.onnx"),
        }
        for why, load in failures.items():
            path = "/v2/repository/models/alpha/load"
            response = await client.post(path, json=load, headers=AUTH)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error.startswith("failed to load 'alpha': ") and why in error, error
            assert host.find("alpha", "2") is loaded  # untouched, still serving
            assert await _infer(client, "alpha", "2") == 2.0
            assert _states(await _index(client)) == {
                ("alpha", "2"): "READY",
                ("beta", "1"): "READY",
                ("broken", "1"): "UNAVAILABLE",
            }
        with pytest.raises(LoadFailed, match=r"failed to load 'alpha': .*not an ONNX model"):
            await host.load("alpha", json.dumps({"version": "2", "model_path": str(corrupt)}))

        config = {"version": "2", "model_path": str(replacement), "metadata": {"rpc": {
            "max_batch_size": 4}}}  # fmt: skip
        response = await client.post(
            "/v2/repository/models/alpha/load", json=_config(**config), headers=AUTH
        )
        assert (response.status_code, response.json()) == (200, {})
        assert host.find("alpha", "2") is not loaded
        assert await _infer(client, "alpha", "2") == 5.0
        served = await client.get("/v2/models/alpha/versions/2/config", headers=AUTH)
        assert served.json()["max_batch_size"] == 4
        assert not loaded.ready  # the old one was drained and closed
        (hosted,) = [h for h in host.hosted() if h.name == "alpha"]
        assert hosted.state is ModelState.READY and hosted.memory_bytes >= 0

    _run(body, repo)


def test_a_model_held_in_its_load_answers_503_while_the_others_serve(
    repo: Path, tmp_path: Path, gates: Gates
) -> None:
    slow = models.tagged(tmp_path / "slow", 3.0)
    gates.load.clear()

    async def body(host: ModelHost, client: httpx.AsyncClient) -> None:
        load = asyncio.create_task(
            client.post(
                "/v2/repository/models/slow/load",
                json=_config(model_path=str(slow), processor=GATED),
                headers=AUTH,
            )
        )
        await _until(gates.loading.is_set, "the load to start")
        assert _states(await _index(client))[("slow", "1")] == "LOADING"
        assert ("slow", "1") not in _states(await _index(client, ready=True))

        for version in (None, "1"):
            call = await _call(client, "slow", version)
            assert call.status_code == 503, call.text
            assert call.headers["retry-after"] == "1"
            assert call.json() == {"error": "model slow version 1 is loading"}
        path = "/v2/models/slow/ready"
        assert (await client.get(path, headers=AUTH)).status_code == 503
        assert (await client.get(path)).status_code == 401  # not ready, still not open
        with pytest.raises(Unavailable, match="is loading"):
            host.find("slow", None)
        # the others serve meanwhile, and the instance is ready
        assert (await _infer(client, "alpha"), await _infer(client, "beta")) == (2.0, 10.0)
        assert (await client.get("/v2/health/ready")).status_code == 200
        stats = await client.get("/v2/models/stats", headers=AUTH)
        assert {s["name"] for s in stats.json()["model_stats"]} == {"alpha", "beta"}
        assert not load.done()

        gates.load.set()
        response = await load
        assert (response.status_code, response.json()) == (200, {})
        assert await _infer(client, "slow") == 3.0
        assert (await client.get(path, headers=AUTH)).status_code == 200
        assert _states(await _index(client))[("slow", "1")] == "READY"

    _run(body, repo)


def test_unload_waits_for_the_batch_in_flight_and_refuses_new_calls(
    repo: Path, tmp_path: Path, gates: Gates
) -> None:
    held = models.tagged(tmp_path / "held", 7.0)

    async def body(host: ModelHost, client: httpx.AsyncClient) -> None:
        await host.load("held", json.dumps({"model_path": str(held), "processor": GATED}))
        gates.run.clear()
        in_flight = asyncio.create_task(_call(client, "held"))
        await _until(gates.running.is_set, "the batch to start running")
        unload = asyncio.create_task(client.post("/v2/repository/models/held/unload", headers=AUTH))
        await _until(
            lambda: any(h.state is ModelState.UNLOADING for h in host.hosted()), "UNLOADING"
        )
        assert _states(await _index(client))[("held", "1")] == "UNLOADING"
        refused = await _call(client, "held")
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json() == {"error": "model held version 1 is being unloaded"}
        assert await _infer(client, "beta") == 10.0
        assert not unload.done() and not in_flight.done()

        gates.run.set()
        answered = await in_flight
        assert answered.status_code == 200, answered.text
        assert (await unload).status_code == 200
        assert (await _call(client, "held")).status_code == 404
        assert ("held", "1") not in _states(await _index(client))  # not in DIR: forgotten

    _run(body, repo)


def test_resources_report_every_model(repo: Path) -> None:
    async def body(host: ModelHost, client: httpx.AsyncClient) -> None:
        for _ in range(3):
            await _infer(client, "beta")
        assert (await client.get("/v2/resources")).status_code == 401
        doc = (await client.get("/v2/resources", headers=AUTH)).json()
        assert doc["rss_bytes"] > 0
        assert 0 < doc["memory_available_bytes"] <= doc["memory_total_bytes"]
        assert isinstance(doc["gpus"], list)
        by_name = {m["name"]: m for m in doc["models"]}
        assert set(by_name) == {"alpha", "beta"}
        beta = by_name["beta"]
        assert (beta["version"], beta["state"], beta["processor"]) == ("1", "READY", "onnx")
        assert beta["inference_count"] == 3 and beta["queue_depth"] == 0
        assert all(m["memory_bytes"] >= 0 for m in doc["models"])

    _run(body, repo)


def test_a_call_still_sending_its_body_during_a_replacement_is_answered(
    repo: Path, tmp_path: Path
) -> None:
    replacement = models.tagged(tmp_path / "replacement", 5.0)
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": X}]}
    ).encode()

    async def main() -> None:
        host = _host(repo)
        app = RepositoryApp(host, token=TOKEN)
        reading, arrived = asyncio.Event(), asyncio.Event()
        sent: list[MutableMapping[str, Any]] = []

        async def receive() -> dict[str, Any]:
            reading.set()
            await arrived.wait()  # the client's body is still on its way
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http", "method": "POST", "path": "/v2/models/alpha/versions/2/infer",
            "headers": [(b"authorization", AUTH["Authorization"].encode())],
            "query_string": b"", "http_version": "1.1", "scheme": "http", "root_path": "",
            "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 40000),
        }  # fmt: skip
        try:
            await host.load_repository()
            host.start()
            call = asyncio.create_task(app(scope, receive, send))
            await _until(reading.is_set, "the call to read its body")
            old = host.find("alpha", "2")
            config = {"version": "2", "model_path": str(replacement)}
            load = asyncio.create_task(host.load("alpha", json.dumps(config)))
            await _until(lambda: host.find("alpha", "2") is not old, "the replacement to swap in")
            assert not load.done()  # the old copy waits for the call it was given
            arrived.set()
            await call
            await load
        finally:
            await host.close()
        assert sent[0]["status"] == 200, sent[1]["body"]

    asyncio.run(main())


def test_a_failed_load_of_another_version_shows_in_the_index(repo: Path, tmp_path: Path) -> None:
    """alpha 2 is served; loading alpha 3 (a file that is no ONNX) fails: the index lists alpha
    3 as UNAVAILABLE with the reason beside the served version, and a good load clears it."""
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    good = models.tagged(tmp_path / "good", 3.0)

    async def body(host: ModelHost, client: httpx.AsyncClient) -> None:
        config = json.dumps({"model_path": str(bad), "version": "3"})
        with pytest.raises(LoadFailed, match="failed to load 'alpha'"):
            await host.load("alpha", config)
        index = {(e["name"], e["version"]): e for e in host.index()}
        assert index[("alpha", "2")]["state"] == "READY"
        assert index[("alpha", "3")]["state"] == "UNAVAILABLE"
        assert "not an ONNX model" in index[("alpha", "3")]["reason"]
        await host.load("alpha", json.dumps({"model_path": str(good), "version": "3"}))
        index = {(e["name"], e["version"]): e for e in host.index()}
        assert (index[("alpha", "3")]["state"], index[("alpha", "3")]["reason"]) == ("READY", "")

    _run(body, repo)
