"""Retries, ejection and the retry budget: scripted server answers through ``httpx.MockTransport``
(503 sequences, dropped connections, timeouts), then real instances killed or drained under load."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from eas_client import (
    AsyncEasClient,
    ClientMetrics,
    ConnectError,
    EasClient,
    InvalidRequest,
    ModelNotFound,
    NoInstanceAvailable,
    RetryBudget,
    ServerError,
    ServiceUnavailable,
    TimeoutException,
    TransportError,
    Unauthorized,
    encode_error,
    encode_response,
)
from tests.fixtures import onnx_models
from tests.fixtures.servers import StartServer
from tests.fixtures.system import served_requests
from tests.fixtures.waiting import wait

X = np.arange(8, dtype=np.float32).reshape(2, 4)
URLS = ["http://10.0.0.1:8000", "http://10.0.0.2:8000", "http://10.0.0.3:8000"]
Behaviour = Callable[[httpx.Request], httpx.Response]


def ok(request: httpx.Request) -> httpx.Response:
    body, length = encode_response(
        model_name="m", model_version=None, request_id=None, outputs=[("y", X)], binary=True
    )
    return httpx.Response(
        200, content=body, headers={"inference-header-content-length": str(length)}
    )


def status(code: int, retry_after: str | None = None) -> Behaviour:
    def answer(request: httpx.Request) -> httpx.Response:
        headers = {"retry-after": retry_after} if retry_after else {}
        return httpx.Response(code, content=encode_error(f"scripted {code}"), headers=headers)

    return answer


def raises(exc: type[httpx.HTTPError]) -> Behaviour:
    def answer(request: httpx.Request) -> httpx.Response:
        raise exc("scripted", request=request)  # type: ignore[call-arg]

    return answer


class Fleet:
    """Scripted instances by host; counts the calls each one got."""

    def __init__(self, *behaviours: Behaviour):
        self.behaviours = {
            URLS[i].split("//")[1].split(":")[0]: b for i, b in enumerate(behaviours)
        }
        self.calls: Counter[str] = Counter()
        self.urls = URLS[: len(behaviours)]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls[request.url.host] += 1
        return self.behaviours[request.url.host](request)

    def client(self, **kwargs: Any) -> EasClient:
        return EasClient(urls=self.urls, model="m", transport=httpx.MockTransport(self), **kwargs)


def retries(registry: CollectorRegistry) -> float:
    labels = {"model": "m", "version": "", "processor": "onnx"}
    return registry.get_sample_value("autoai_client_retries_total", labels) or 0.0


# ------------------------------------------------------------------------------------ retries


def test_503_is_retried_on_another_instance() -> None:
    fleet = Fleet(status(503), ok)
    registry = CollectorRegistry()
    with fleet.client(metrics=ClientMetrics(registry), eject_after=1000) as client:
        for _ in range(30):
            np.testing.assert_array_equal(client.infer({"x": X})["y"], X)
    assert fleet.calls["10.0.0.1"] > 0 and fleet.calls["10.0.0.2"] == 30
    assert retries(registry) == fleet.calls["10.0.0.1"]


def test_503_everywhere_raises_the_last_answer_with_what_was_tried() -> None:
    fleet = Fleet(status(503, "2"), status(503, "2"), status(503, "2"))
    with fleet.client(max_attempts=2) as client, pytest.raises(ServiceUnavailable) as caught:
        client.infer({"x": X})
    assert caught.value.retry_after == 2.0 and caught.value.message == "scripted 503"
    assert sum(fleet.calls.values()) == 2 and max(fleet.calls.values()) == 1
    note = caught.value.__notes__[-1]
    assert "service 'm': tried 10.0.0." in note and "(503)" in note
    assert "max_attempts=2 reached" in note
    fleet = Fleet(status(503), status(503))
    with fleet.client() as client, pytest.raises(ServiceUnavailable) as caught:
        client.infer({"x": X})
    assert fleet.calls == {"10.0.0.1": 1, "10.0.0.2": 1}
    assert "no other instance is left" in caught.value.__notes__[-1]


@pytest.mark.parametrize(
    "failure",
    [httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectTimeout],
)
def test_connect_errors_drops_and_early_timeouts_are_retried(
    failure: type[httpx.HTTPError],
) -> None:
    fleet = Fleet(raises(failure), ok)
    with fleet.client(eject_after=1000) as client:
        for _ in range(20):
            client.infer({"x": X})
    assert fleet.calls["10.0.0.1"] > 0 and fleet.calls["10.0.0.2"] == 20


def test_a_lone_instance_that_refuses_means_no_instance_available() -> None:
    fleet = Fleet(raises(httpx.ConnectError))
    with fleet.client() as client, pytest.raises(NoInstanceAvailable) as caught:
        client.infer({"x": X})
    assert caught.value.service == "m"
    assert "tried 10.0.0.1:8000 (ConnectError)" in str(caught.value)
    cause = caught.value.__cause__
    assert isinstance(cause, ConnectError)
    assert cause.url == "http://10.0.0.1:8000/v2/models/m/infer"
    assert isinstance(cause.__cause__, httpx.ConnectError)


@pytest.mark.parametrize(
    ("code", "error"),
    [(400, InvalidRequest), (401, Unauthorized), (404, ModelNotFound), (500, ServerError)],
)
def test_answers_other_than_503_are_not_retried(code: int, error: type[ServerError]) -> None:
    fleet = Fleet(status(code), status(code), status(code))
    with fleet.client() as client, pytest.raises(error) as caught:
        client.infer({"x": X})
    assert caught.value.status_code == code
    assert sum(fleet.calls.values()) == 1


def test_protocol_failures_of_the_transport_are_not_retried() -> None:
    fleet = Fleet(raises(httpx.UnsupportedProtocol), raises(httpx.UnsupportedProtocol))
    with fleet.client() as client, pytest.raises(TransportError) as caught:
        client.infer({"x": X})
    assert type(caught.value) is TransportError
    assert sum(fleet.calls.values()) == 1


def test_a_timeout_that_used_the_deadline_is_not_retried() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        time.sleep(0.3)  # the real transport would have timed out at the deadline
        raise httpx.ReadTimeout("scripted", request=request)

    fleet = Fleet(slow, slow)
    with fleet.client(timeout=0.2) as client, pytest.raises(TimeoutException) as caught:
        client.infer({"x": X})
    assert sum(fleet.calls.values()) == 1
    assert "deadline has passed" in caught.value.__notes__[-1]


def test_each_attempt_gets_the_time_left() -> None:
    seen: list[dict[str, float]] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return status(503)(request)

    fleet = Fleet(record, record)
    with fleet.client(timeout=3.0) as client, pytest.raises(ServiceUnavailable):
        client.infer({"x": X})
    first, second = seen
    assert first["connect"] == pytest.approx(1.0) and 2.9 < first["read"] <= 3.0
    assert second["read"] <= first["read"] and second["pool"] == second["read"]


# ------------------------------------------------------------------- budget and breaker


def test_retries_stop_when_the_budget_is_spent() -> None:
    fleet = Fleet(status(503), ok)
    registry = CollectorRegistry()
    budget = RetryBudget(ratio=0.0, min_per_second=0.3, ttl=10.0)  # 3 retries, then none
    failures: list[ServiceUnavailable] = []
    with fleet.client(
        retry_budget=budget, eject_after=1000, metrics=ClientMetrics(registry)
    ) as client:
        for _ in range(60):
            try:
                client.infer({"x": X})
            except ServiceUnavailable as exc:
                failures.append(exc)
    assert retries(registry) == 3
    assert len(failures) == fleet.calls["10.0.0.1"] - 3 > 0
    assert all("retry budget is spent" in f.__notes__[-1] for f in failures)


def test_a_failing_instance_is_ejected() -> None:
    fleet = Fleet(raises(httpx.ConnectError), ok)
    with fleet.client(eject_after=3, eject_for=60.0) as client:
        for _ in range(100):
            client.infer({"x": X})
    assert fleet.calls["10.0.0.1"] == 3


def test_a_cancelled_async_call_releases_its_instance() -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(60)
        raise AssertionError("not reached")

    async def main() -> None:
        transport = httpx.MockTransport(hang)
        async with AsyncEasClient(urls=URLS[:1], model="m", transport=transport) as client:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.infer({"x": X}), 0.1)
            (endpoint,) = client._balancer.endpoints()
            assert endpoint.outstanding == 0 and endpoint.failures == 0

    asyncio.run(main())


def test_async_client_retries_the_same_way() -> None:
    fleet = Fleet(status(503), raises(httpx.ConnectError), ok)

    async def main() -> None:
        transport = httpx.MockTransport(fleet)
        async with AsyncEasClient(
            urls=fleet.urls, model="m", transport=transport, eject_after=1000
        ) as client:
            for _ in range(30):
                np.testing.assert_array_equal((await client.infer({"x": X}))["y"], X)

    asyncio.run(main())
    assert fleet.calls["10.0.0.3"] == 30


# ----------------------------------------------------------------------- instances dying


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return onnx_models.identity(tmp_path_factory.mktemp("models"))


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    """``tests.fixtures.waiting.wait`` with this module's defaults."""
    wait(predicate, timeout, "the condition", step=0.02)


CALLERS = 32


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill", "sigterm"])
def test_no_call_fails_when_an_instance_dies_under_load(
    how: str, start_server: StartServer, identity: Path, tmp_path: Path
) -> None:
    """32 threads call two instances; one is killed (-9) or drained (SIGTERM) mid-load."""
    url = f"sqlite://{tmp_path / 'store.db'}"
    doomed = start_server(identity, "--store", url, "--service", "svc")
    start_server(identity, "--store", url, "--service", "svc")
    stop = threading.Event()
    done = [0] * CALLERS
    after = [0] * CALLERS
    failures: list[BaseException] = []
    killed = threading.Event()

    def caller(k: int, client: EasClient) -> None:
        x = np.full((1, 4), k, dtype=np.float32)
        while not stop.is_set():
            try:
                out = client.infer({"x": x})
                assert out["y"][0, 0] == k
            except BaseException as exc:
                failures.append(exc)
                return
            done[k] += 1
            after[k] += killed.is_set()

    registry = CollectorRegistry()
    metrics = ClientMetrics(registry)
    with EasClient(store=url, service="svc", timeout=20.0, metrics=metrics) as client:
        wait_until(lambda: len(client.instances()) == 2)
        threads = [threading.Thread(target=caller, args=(k, client)) for k in range(CALLERS)]
        for t in threads:
            t.start()
        # counts, not seconds: traffic is under way, and goes on well after the instance died,
        # however loaded the machine is (a failed caller ends the wait)
        wait_until(lambda: sum(done) > 100 or bool(failures), timeout=60)
        if how == "kill":
            doomed.proc.kill()
        else:
            doomed.terminate()
        killed.set()
        assert doomed.proc.wait(20) == (-9 if how == "kill" else 0)
        wait_until(lambda: sum(after) > 100 or bool(failures), timeout=60)
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
    assert sum(done) > 200 and sum(after) > 100, (sum(done), sum(after))
    labels = {"model": "svc", "version": "", "processor": "onnx"}
    ok = registry.get_sample_value("autoai_client_requests_total", {**labels, "outcome": "ok"})
    assert ok == sum(done)
    if how == "kill":  # calls in flight on the killed instance went elsewhere
        assert (registry.get_sample_value("autoai_client_retries_total", labels) or 0) > 0


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill", "sigterm"])
def test_no_async_call_fails_when_an_instance_dies_under_load(
    how: str, start_server: StartServer, identity: Path, tmp_path: Path
) -> None:
    """The same with 32 tasks of one event loop."""
    url = f"sqlite://{tmp_path / 'store.db'}"
    doomed = start_server(identity, "--store", url, "--service", "svc")
    start_server(identity, "--store", url, "--service", "svc")
    done: list[int] = []
    failures: list[BaseException] = []

    async def caller(k: int, client: AsyncEasClient, stop: asyncio.Event) -> None:
        x = np.full((1, 4), k, dtype=np.float32)
        while not stop.is_set():
            try:
                out = await client.infer({"x": x})
                assert out["y"][0, 0] == k
            except Exception as exc:
                failures.append(exc)
                return
            done.append(k)

    async def main() -> int:
        stop = asyncio.Event()
        async with AsyncEasClient(store=url, service="svc", timeout=20.0) as client:
            while len(client.instances()) < 2:
                await asyncio.sleep(0.02)
            tasks = [asyncio.create_task(caller(k, client, stop)) for k in range(CALLERS)]
            # counts, not seconds (bounded by the wait_for below): traffic is under way, and goes
            # on well after the instance died, however loaded the machine is
            while len(done) <= 100 and not failures:
                await asyncio.sleep(0.02)
            if how == "kill":
                doomed.proc.kill()
            else:
                doomed.terminate()
            before = len(done)
            while len(done) - before <= 100 and not failures:
                await asyncio.sleep(0.02)
            await asyncio.to_thread(doomed.proc.wait, 20)
            stop.set()
            await asyncio.gather(*tasks)
            return len(done) - before

    after = asyncio.run(asyncio.wait_for(main(), 50))
    assert failures == []
    assert after > 100, after
    assert doomed.proc.returncode == (-9 if how == "kill" else 0)


@pytest.mark.slow
def test_a_hung_instance_costs_one_attempt_then_is_ejected_and_comes_back(
    start_server: StartServer, identity: Path, tmp_path: Path
) -> None:
    """SIGSTOP: the process accepts connections and never answers. With ``attempt_timeout`` a call
    that lands on it moves to the other instance; the breaker ejects it; after SIGCONT it serves
    again."""
    url = f"sqlite://{tmp_path / 'store.db'}"
    hung = start_server(identity, "--store", url, "--service", "svc")
    start_server(identity, "--store", url, "--service", "svc")
    stop = threading.Event()
    durations: list[float] = []
    failures: list[BaseException] = []

    def caller(client: EasClient) -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                client.infer({"x": X})
            except BaseException as exc:
                failures.append(exc)
                return
            durations.append(time.perf_counter() - t0)

    registry = CollectorRegistry()
    options: dict[str, Any] = {"timeout": 5.0, "attempt_timeout": 0.5, "eject_for": 1.0}
    with EasClient(store=url, service="svc", metrics=ClientMetrics(registry), **options) as client:
        wait_until(lambda: len(client.instances()) == 2)
        threads = [threading.Thread(target=caller, args=(client,)) for _ in range(8)]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: len(durations) > 50 or bool(failures))  # traffic under way
            os.kill(hung.proc.pid, signal.SIGSTOP)
            stopped = len(durations)
            time.sleep(3.0)
            during = durations[stopped:]
            labels = {"model": "svc", "version": "", "processor": "onnx"}
            retried = registry.get_sample_value("autoai_client_retries_total", labels) or 0
            os.kill(hung.proc.pid, signal.SIGCONT)
            before = served_requests(hung.url)
            wait_until(
                lambda: served_requests(hung.url) > before + 20, timeout=30
            )  # back in rotation
        finally:
            os.kill(hung.proc.pid, signal.SIGCONT)
            stop.set()
            for t in threads:
                t.join(30)
    assert failures == []
    assert max(during) < 1.5, max(during)  # one 0.5 s attempt at most, never the 5 s deadline
    # the breaker ejected it: a handful of the thousands of calls in those 3 s paid the 0.5 s
    assert 1 <= retried <= 50 and len(during) > 500, (retried, len(during))
