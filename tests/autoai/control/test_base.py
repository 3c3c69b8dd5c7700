"""The pure part of the clients (``autoai.control._base``): job polling as a generator on a virtual
clock, the status -> error table, transport errors, and request bodies."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import httpx
import pytest

from autoai.control import (
    Conflict,
    ControlError,
    Forbidden,
    InsufficientStorage,
    InvalidRequest,
    JobFailed,
    JobTimeout,
    NotFound,
    PayloadTooLarge,
    ServerError,
    Unauthorized,
    Unavailable,
    UnexpectedAnswer,
    Unreachable,
)
from autoai.control._base import Call, _BaseControlClient, _body, error_of, transport_error
from autoai.schema import DeploySpec, JobInfo

URL = "http://control"


def _job(state: str, progress: float, step: str = "", **more: Any) -> JobInfo:
    doc = {
        "id": "j1", "kind": "deploy", "title": "deploy m 1", "state": state,
        "progress": progress, "step": step, "log": [step] if step else [], "result": None,
        "error": None, "created": 0.0, "finished": None, **more,
    }  # fmt: skip
    return JobInfo.model_validate(doc)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _drive(
    polling: Generator[Call[JobInfo] | float, JobInfo, JobInfo],
    readings: list[JobInfo],
    clock: _Clock,
) -> tuple[JobInfo, list[float]]:
    """Answer each read with the next reading and advance the clock by each sleep."""
    sleeps: list[float] = []
    step = next(polling)
    answers = iter(readings)
    try:
        while True:
            if isinstance(step, Call):
                assert (step.method, step.path) == ("GET", "/api/v1/jobs/j1")
                step = polling.send(next(answers))
            else:
                sleeps.append(step)
                clock.now += step
                step = next(polling)
    except StopIteration as done:
        return done.value, sleeps


def test_polling_reports_every_reading_and_returns_the_succeeded_job() -> None:
    clock = _Clock()
    client = _BaseControlClient(URL, poll=0.5, clock=clock)
    seen: list[JobInfo] = []
    readings = [
        _job("pending", 0.0),
        _job("running", 0.4, "optimize"),
        _job("succeeded", 1.0, "ready"),
    ]
    job, sleeps = _drive(client._poll_job("j1", None, None, seen.append), readings, clock)
    assert job == readings[-1] and seen == readings
    assert sleeps == [0.5, 0.5]


def test_polling_sleeps_no_longer_than_the_bound_and_then_times_out() -> None:
    clock = _Clock()
    client = _BaseControlClient(URL, poll=1.0, clock=clock)
    readings = [_job("running", 0.1, "start")] * 4
    with pytest.raises(JobTimeout) as late:
        _drive(client._poll_job("j1", 2.5, None, None), readings, clock)
    assert late.value.job == readings[0]
    assert "still running at start after 2.5 s" in str(late.value)
    assert isinstance(late.value, TimeoutError) and isinstance(late.value, ControlError)
    assert clock.now == pytest.approx(102.5)  # slept 1, 1, then the 0.5 left


def test_a_poll_interval_per_call_wins_over_the_client_s() -> None:
    clock = _Clock()
    client = _BaseControlClient(URL, poll=5.0, clock=clock)
    readings = [_job("running", 0.5), _job("succeeded", 1.0)]
    _, sleeps = _drive(client._poll_job("j1", None, 0.05, None), readings, clock)
    assert sleeps == [0.05]


def test_a_failed_job_raises_with_its_error_and_last_state() -> None:
    clock = _Clock()
    client = _BaseControlClient(URL, clock=clock)
    failed = _job(
        "failed",
        0.6,
        "start",
        error={"error": "exited before it was ready", "detail": {"log": ["boom"]}},
    )
    with pytest.raises(JobFailed) as error:
        _drive(client._poll_job("j1", 10, None, None), [failed], clock)
    assert str(error.value) == "deploy m 1 failed: exited before it was ready"
    assert error.value.job == failed and error.value.detail == {"log": ["boom"]}


def _answer(status: int, body: Any = None, **headers: str) -> httpx.Response:
    request = httpx.Request("GET", f"{URL}/api/v1/x")
    if isinstance(body, str):
        return httpx.Response(status, text=body, headers=headers, request=request)
    return httpx.Response(status, json=body, headers=headers, request=request)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, InvalidRequest),
        (401, Unauthorized),
        (403, Forbidden),
        (404, NotFound),
        (409, Conflict),
        (413, PayloadTooLarge),
        (422, InvalidRequest),
        (500, ServerError),
        (502, ServerError),
        (503, Unavailable),
        (507, InsufficientStorage),
    ],
)
def test_each_status_is_its_error_with_the_server_s_error_and_detail(
    status: int, kind: type[ControlError]
) -> None:
    error = error_of(_answer(status, {"error": "what went wrong", "detail": {"k": 1}}), URL)
    assert type(error) is kind
    assert (error.status, error.error, error.detail, error.url) == (
        status,
        "what went wrong",
        {"k": 1},
        URL,
    )
    assert str(error) == f"what went wrong (HTTP {status})"


def test_error_answers_that_are_not_ours() -> None:
    plain = error_of(_answer(502, "Bad gateway from a proxy\nmore"), URL)
    assert (type(plain), plain.error, plain.detail) == (ServerError, "Bad gateway from a proxy", {})
    fastapi = error_of(_answer(405, {"detail": "Method Not Allowed"}), URL)
    assert fastapi.error == "Method Not Allowed"
    busy = error_of(_answer(503, {"error": "store down"}, **{"Retry-After": "5"}), URL)
    assert isinstance(busy, Unavailable) and busy.retry_after == 5.0


def test_transport_errors_are_unreachable() -> None:
    request = httpx.Request("GET", URL)
    refused = transport_error(
        httpx.ConnectError("[Errno 111] Connection refused", request=request), URL
    )
    assert isinstance(refused, Unreachable) and isinstance(refused, Unavailable)
    assert str(refused) == f"no control plane answers at {URL}: [Errno 111] Connection refused"
    slow = transport_error(httpx.ReadTimeout("timed out", request=request), URL)
    assert isinstance(slow, Unreachable) and slow.timed_out
    assert "did not answer in time (ReadTimeout)" in str(slow)


def test_a_success_that_is_not_the_document_expected() -> None:
    client = _BaseControlClient(URL)
    with pytest.raises(UnexpectedAnswer, match="not JSON"):
        client._answer(client._healthz(), _answer(200, "<html>a proxy page</html>"))
    with pytest.raises(UnexpectedAnswer, match="not the document expected: status"):
        client._answer(client._healthz(), _answer(200, {"replica": "r"}))


def test_bodies_are_json_and_a_deploy_spec_keeps_its_token() -> None:
    spec = DeploySpec.model_validate({"processor": "onnx", "token": "t0k", "metadata.instance": 2})
    assert _body(spec) == {"processor": "onnx", "metadata": {"instance": 2}, "token": "t0k"}
    assert "token" not in spec.model_dump()  # the model itself never dumps it
    assert _body({"routes": []}) == {"routes": []}
