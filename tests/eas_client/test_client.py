"""EasClient / AsyncEasClient against real eas-server processes and a real store."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from config_store import open_store
from eas_client import (
    AsyncEasClient,
    ClientMetrics,
    EasClient,
    InvalidRequest,
    ModelNotFound,
    NoInstanceAvailable,
    TimeoutException,
    Unauthorized,
)
from eas_client._instances import Instances
from tests.fixtures import onnx_models
from tests.fixtures.servers import ServerProcess, StartServer
from tests.fixtures.waiting import wait


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "identity": onnx_models.identity(d),
        "add_mul": onnx_models.add_mul(d),
        "multi_dtype": onnx_models.multi_dtype(d),
    }


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    """``tests.fixtures.waiting.wait`` with this module's defaults."""
    wait(predicate, timeout, "the condition", step=0.02)


def served(server: ServerProcess, model: str = "m") -> int:
    stats = httpx.get(f"{server.url}/v2/models/{model}/stats").json()
    return int(stats["model_stats"][0]["inference_count"])


def sample_value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(
        name, {"model": "m", "version": "", "processor": "onnx", **labels}
    )
    return 0.0 if value is None else value


X = np.arange(8, dtype=np.float32).reshape(2, 4)


# ------------------------------------------------------------------------------- urls mode


def test_binary_and_json_give_the_same_outputs(
    start_server: StartServer, models: dict[str, Path]
) -> None:
    server = start_server(models["multi_dtype"])
    rng = np.random.default_rng(0)
    inputs: dict[str, np.ndarray[Any, Any]] = {
        "in_int32": rng.integers(-1000, 1000, (3, 2)).astype(np.int32),
        "in_int64": rng.integers(-(2**40), 2**40, (3, 2)).astype(np.int64),
        "in_fp16": rng.standard_normal((3, 2)).astype(np.float16),
        "in_bool": rng.integers(0, 2, (3, 2)).astype(bool),
        "in_uint8": rng.integers(0, 256, (3, 2)).astype(np.uint8),
    }
    with (
        EasClient(urls=[server.url], model="m") as binary,
        EasClient(urls=[server.url], model="m", binary=False) as json,
    ):
        via_binary = binary.infer(inputs)
        via_json = json.infer(inputs)
        assert via_binary.keys() == via_json.keys() == {n.replace("in_", "out_") for n in inputs}
        for name, array in inputs.items():
            out = name.replace("in_", "out_")
            assert via_binary[out].dtype == via_json[out].dtype == array.dtype
            np.testing.assert_array_equal(via_binary[out], array)
            np.testing.assert_array_equal(via_json[out], array)
        only = json.infer(inputs, outputs=["out_int64"])
        assert list(only) == ["out_int64"]


def test_two_inputs_two_outputs_and_output_selection(
    start_server: StartServer, models: dict[str, Path]
) -> None:
    server = start_server(models["add_mul"], "--version", "3")
    a = np.full((2, 4), 3.0, dtype=np.float32)
    b = np.arange(8, dtype=np.float32).reshape(2, 4)
    with EasClient(urls=[server.url + "/"], model="m", version="3") as client:
        out = client.infer({"a": a, "b": b})
        np.testing.assert_array_equal(out["sum"], a + b)
        np.testing.assert_array_equal(out["prod"], a * b)
        assert list(client.infer({"a": a, "b": b}, ["prod"])) == ["prod"]
        (instance,) = client.instances()
        assert instance.address == server.address
    with EasClient(urls=[server.url], model="m", version="4") as wrong:
        with pytest.raises(ModelNotFound, match="404"):
            wrong.infer({"a": a, "b": b})


def test_token_is_sent_as_bearer(start_server: StartServer, models: dict[str, Path]) -> None:
    server = start_server(models["identity"], env={"EAS_TOKEN": "s3cret"})
    with EasClient(urls=[server.url], model="m") as anonymous:
        with pytest.raises(Unauthorized, match="missing token"):
            anonymous.infer({"x": X})
    with EasClient(urls=[server.url], model="m", token="wrong") as wrong:
        with pytest.raises(Unauthorized, match="invalid token"):
            wrong.infer({"x": X})
    with EasClient(urls=[server.url], model="m", token="s3cret", binary=False) as client:
        np.testing.assert_array_equal(client.infer({"x": X})["y"], X)


def test_400_and_404_are_not_retried(start_server: StartServer, models: dict[str, Path]) -> None:
    servers = [start_server(models["identity"]) for _ in range(2)]
    registry = CollectorRegistry()
    urls = [s.url for s in servers]
    with EasClient(urls=urls, model="m", metrics=ClientMetrics(registry)) as client:
        with pytest.raises(InvalidRequest, match="unknown input 'z'"):
            client.infer({"z": X})
        with pytest.raises(InvalidRequest):
            client.infer({"x": X.reshape(1, 2, 4)})
        assert sample_value(registry, "autoai_client_requests_total", outcome="invalid") == 2
    metrics = ClientMetrics(registry)
    with EasClient(urls=urls, model="other", metrics=metrics, labels={"model": "m"}) as other:
        with pytest.raises(ModelNotFound):
            other.infer({"x": X})
    assert sample_value(registry, "autoai_client_retries_total") == 0


def test_the_deadline_bounds_a_call_to_a_hung_instance(
    start_server: StartServer, models: dict[str, Path]
) -> None:
    server = start_server(models["identity"])
    os.kill(server.proc.pid, signal.SIGSTOP)  # accepts connections (backlog), never answers
    try:
        with EasClient(urls=[server.url], model="m", timeout=30.0) as client:
            started = time.monotonic()
            with pytest.raises(TimeoutException) as caught:
                client.infer({"x": X}, timeout=0.3)
            assert 0.25 < time.monotonic() - started < 3.0
            assert caught.value.url is not None and server.address in caught.value.url
        with EasClient(urls=[server.url], model="m", timeout=0.3) as client:
            started = time.monotonic()
            with pytest.raises(TimeoutException):
                client.infer({"x": X})
            assert time.monotonic() - started < 3.0
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


def test_metrics_count_calls_and_share_one_registry(
    start_server: StartServer, models: dict[str, Path]
) -> None:
    server = start_server(models["identity"])
    registry = CollectorRegistry()
    first, second = ClientMetrics(registry), ClientMetrics(registry)
    assert first.requests is second.requests and first.fallbacks is second.fallbacks
    labels = {"model": "intent", "version": "3", "processor": "blade"}
    with EasClient(urls=[server.url], model="m", metrics=second, labels=labels) as client:
        client.infer({"x": X})
        client.infer({"x": X})
    assert (
        registry.get_sample_value("autoai_client_requests_total", {**labels, "outcome": "ok"}) == 2
    )
    assert registry.get_sample_value("autoai_client_request_duration_seconds_count", labels) == 2
    with pytest.raises(ValueError, match="unknown"):
        EasClient(urls=[server.url], model="m", metrics=first, labels={"route": "a"})


# ------------------------------------------------------------------------------- discovery


@pytest.fixture(params=["sqlite", "zk"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "zk":
        return str(request.getfixturevalue("zk_url"))
    return f"sqlite://{tmp_path / 'store.db'}"


def test_instances_follow_registrations(
    start_server: StartServer, models: dict[str, Path], store_url: str
) -> None:
    first = start_server(models["identity"], "--store", store_url, "--service", "svc")
    with EasClient(store=store_url, service="svc") as client:
        wait_until(lambda: len(client.instances()) == 1)
        assert client.instances()[0].payload["model"] == "m"
        np.testing.assert_array_equal(client.infer({"x": X})["y"], X)
        second = start_server(models["identity"], "--store", store_url, "--service", "svc")
        wait_until(lambda: len(client.instances()) == 2)
        for _ in range(60):
            client.infer({"x": X})
        assert served(first) > 5 and served(second) > 5
        assert first.stop() == 0
        # the client learns of the deregistration through its watch, which may be delivered after
        # the process exited (its drain waits only 0.3 s of quiet): wait for it, bounded
        wait_until(lambda: [i.address for i in client.instances()] == [second.address])
        for _ in range(10):
            client.infer({"x": X})
        # the pool of the instance that left was closed once nothing was in flight on it
        assert isinstance(client._transport, Instances)
        assert client._transport.origins() == [second.url]


def test_a_store_object_is_shared_and_a_url_is_owned(
    start_server: StartServer, models: dict[str, Path], tmp_path: Path
) -> None:
    url = f"sqlite://{tmp_path / 'store.db'}"
    start_server(models["identity"], "--store", url, "--version", "2")
    with open_store(url) as store:
        client = EasClient(store=store, service="m-2")
        wait_until(lambda: len(client.instances()) == 1)
        np.testing.assert_array_equal(client.infer({"x": X})["y"], X)  # model/version of payload
        client.close()
        assert store.state != "closed" and len(store.instances("m-2")) == 1
        with pytest.raises(RuntimeError, match="closed"):
            client.infer({"x": X})
    owned = EasClient(store=url, service="m-2")
    opened = owned._store
    owned.close()
    owned.close()  # idempotent
    assert opened is not None and opened.state == "closed"


def test_no_instance_available_names_the_service(tmp_path: Path) -> None:
    with EasClient(store=f"sqlite://{tmp_path / 'store.db'}", service="nobody-1") as client:
        with pytest.raises(NoInstanceAvailable, match="'nobody-1'") as caught:
            client.infer({"x": X})
        assert caught.value.service == "nobody-1"


def test_async_client_discovers_and_calls_concurrently(
    start_server: StartServer, models: dict[str, Path], tmp_path: Path
) -> None:
    url = f"sqlite://{tmp_path / 'store.db'}"
    servers = [start_server(models["add_mul"], "--store", url, "--service", "svc") for _ in "ab"]
    a = np.ones((1, 4), dtype=np.float32)

    async def main() -> list[dict[str, Any]]:
        async with AsyncEasClient(store=url, service="svc") as client:
            deadline = time.monotonic() + 15
            while len(client.instances()) < 2:
                assert time.monotonic() < deadline, "the client did not see both instances"
                await asyncio.sleep(0.02)
            outs = await asyncio.gather(*(client.infer({"a": a * k, "b": a}) for k in range(40)))
            with pytest.raises(InvalidRequest):
                await client.infer({"a": a})
            return outs

    outs = asyncio.run(asyncio.wait_for(main(), 30))
    for k, out in enumerate(outs):
        np.testing.assert_array_equal(out["sum"], a * k + a)
    assert all(served(s) > 0 for s in servers)


def test_async_client_in_urls_mode_without_context_manager(
    start_server: StartServer, models: dict[str, Path]
) -> None:
    server = start_server(models["identity"])

    async def main() -> None:
        client = AsyncEasClient(urls=[server.url], model="m", binary=False)
        try:
            np.testing.assert_array_equal((await client.infer({"x": X}))["y"], X)
        finally:
            await client.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            await client.infer({"x": X})

    asyncio.run(asyncio.wait_for(main(), 30))


# ---------------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "either store= and service="),
        ({"store": "sqlite:///x.db", "urls": ["http://h:1"], "service": "s"}, "not both"),
        ({"store": "sqlite:///x.db"}, "needs service="),
        ({"urls": ["http://h:1"]}, "needs model="),
        ({"urls": "http://h:1", "model": "m"}, "list of http"),
        ({"urls": ["ftp://h:1"], "model": "m"}, "expected http://host:port"),
        ({"urls": ["http://h:1", "http://h:1"], "model": "m"}, "listed twice"),
        ({"urls": ["http://h:1"], "model": "m", "timeout": 0}, "timeout"),
        ({"urls": ["http://h:1"], "model": "m", "max_attempts": 0}, "max_attempts"),
        ({"urls": ["http://h:1"], "model": "m", "version": 3}, "version"),
        ({"urls": ["http://h:1"], "model": "m", "eject_after": 0}, "eject_after"),
    ],
)
def test_constructor_says_what_is_wrong(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EasClient(**kwargs)
    with pytest.raises(ValueError, match=match):
        AsyncEasClient(**kwargs)


def test_urls_mode_lists_its_instances() -> None:
    urls = ["http://127.0.0.1:8001", "https://[::1]:8443/prefix", "http://example.test"]
    with EasClient(urls=urls, model="m") as client:
        assert [i.id for i in client.instances()] == [
            "127.0.0.1:8001",
            "::1:8443",
            "example.test:80",
        ]
        assert repr(client) == "<EasClient 'm' instances=3>"
