"""The model server's OIP routes under bad input, in process: raw ASGI messages with fuzzed
headers and bodies (split into random chunks), and schemathesis against an OpenAPI description of
the routes. Whatever arrives, the answer is a 4xx/503 with an ``{"error": ...}`` body, never a 5xx
from a bug, and the server still answers a good request afterwards.

The app is ``eas_server.build_app`` over a real ONNX Runtime session of a tiny identity model
(``x`` [batch, n] FP32 -> ``y``), its batcher running on an anyio portal's loop.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import hypothesis
import pytest
import requests
import schemathesis
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok

from eas_server._app import EasApp
from eas_server._server import build_app
from eas_server._settings import ServerSettings
from eas_server.processors import create_processor
from tests.fixtures import onnx_models
from tests.fixtures.fuzzing import examples

pytestmark = pytest.mark.slow

TOKEN = "fuzz-token-5e2b"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GOOD = json.dumps(
    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]}
).encode()


@asynccontextmanager
async def _running(app: EasApp) -> AsyncIterator[EasApp]:
    app.batcher.start()
    app.ready = True
    try:
        yield app
    finally:
        app.ready = False
        await app.batcher.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EasApp, BlockingPortal]]:
    model = onnx_models.identity(tmp_path_factory.mktemp("oip"))
    settings = ServerSettings(
        model=str(model), name="m", token=TOKEN, max_body_mb=1 / 16, max_request_rows=64
    )
    processor = create_processor("onnx", str(model), workers=1, intra_op_threads=1)
    processor.load()
    processor.warmup()
    try:
        app = build_app(settings, processor)
        with start_blocking_portal() as portal, portal.wrap_async_context_manager(_running(app)):
            yield app, portal
    finally:
        processor.close()


Answer = tuple[int, dict[bytes, bytes], bytes]


async def _asgi(
    app: EasApp, method: str, path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes]
) -> Answer:
    """One request as raw ASGI messages: the body in the chunks given, as a server would pass it."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    pending = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks or [b""])
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


def _call(
    served: tuple[EasApp, BlockingPortal],
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    chunks: list[bytes],
) -> Answer:
    app, portal = served
    return portal.call(_asgi, app, method, path, headers, chunks)


def _assert_refused_cleanly(answer: Answer, what: object) -> None:
    status, headers, body = answer
    assert status < 500 or status == 503, (what, status, body[:300])
    if status >= 400:
        assert headers.get(b"content-type") == b"application/json", what
        assert isinstance(json.loads(body)["error"], str), (what, body[:300])


def _still_serves(served: tuple[EasApp, BlockingPortal]) -> None:
    headers = [(b"authorization", f"Bearer {TOKEN}".encode())]
    status, _, body = _call(served, "POST", "/v2/models/m/infer", headers, [GOOD])
    assert status == 200, body


FUZZ = hypothesis.settings(
    max_examples=examples(400),
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def _chunked(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(body) + 1) for c in cuts})
    edges = [0, *points, len(body)]
    return [body[a:b] for a, b in itertools.pairwise(edges)]


HEADER_VALUES = st.one_of(
    st.sampled_from([b"", b"0", b"-1", b"abc", b"1e3", b" 12 ", b"99999999999999999999", b"\xff"]),
    st.integers(-5, 300).map(lambda n: str(n).encode()),
    st.binary(max_size=12),
)
INFER_HEADERS = st.lists(
    st.tuples(
        st.sampled_from(
            [b"inference-header-content-length", b"content-length", b"content-type", b"x-any"]
        ),
        HEADER_VALUES,
    ),
    max_size=3,
)


def _bodies() -> st.SearchStrategy[bytes]:
    tensor = st.fixed_dictionaries(
        {},
        optional={
            "name": st.sampled_from(["x", "y", ""]) | st.integers(),
            "datatype": st.sampled_from(["FP32", "INT64", "BYTES", "BOOL", "FP16", "x"]),
            "shape": st.lists(st.integers(-2, 2**40) | st.integers(0, 3), max_size=3),
            "data": st.lists(st.floats() | st.integers(-(2**63), 2**64) | st.text(max_size=2))
            | st.lists(st.lists(st.floats(width=32), max_size=3), max_size=3),
            "parameters": st.dictionaries(
                st.sampled_from(["binary_data_size", "x"]), st.integers(-1, 2**40) | st.text()
            ),
        },
    )
    doc = st.fixed_dictionaries(
        {},
        optional={
            "id": st.text(max_size=3) | st.integers(),
            "inputs": st.lists(tensor, max_size=3),
            "outputs": st.lists(
                st.fixed_dictionaries(
                    {"name": st.sampled_from(["y", "z"])},
                    optional={"parameters": st.dictionaries(st.just("binary_data"), st.booleans())},
                ),
                max_size=2,
            ),
            "parameters": st.dictionaries(
                st.sampled_from(["priority", "timeout", "binary_data_output"]),
                st.integers(-2, 2**64) | st.booleans() | st.text(max_size=3) | st.floats(),
            ),
        },
    )
    return st.one_of(
        st.tuples(doc.map(lambda d: json.dumps(d).encode()), st.binary(max_size=64)).map(
            lambda p: p[0] + p[1]
        ),
        st.binary(max_size=256),
        st.just(GOOD),
        st.just(b"\0" * 8192),
    )


@FUZZ
@given(
    body=_bodies(),
    headers=INFER_HEADERS,
    cuts=st.lists(st.integers(0, 10_000), max_size=4),
    path=st.sampled_from(
        ["/v2/models/m/infer", "/v2/models/m/versions/1/infer", "/v2/models/m/versions/2/infer"]
    ),
    authorized=st.booleans(),
)
def test_infer_never_answers_5xx(
    served: tuple[EasApp, BlockingPortal],
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    cuts: list[int],
    path: str,
    authorized: bool,
) -> None:
    auth = [(b"authorization", f"Bearer {TOKEN}".encode())] if authorized else []
    answer = _call(served, "POST", path, auth + headers, _chunked(body, cuts))
    _assert_refused_cleanly(answer, (body[:200], headers, path))
    if not authorized:
        assert answer[0] in (401, 404), answer


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "x"]),
    path=st.lists(
        st.sampled_from(["v2", "models", "m", "versions", "1", "infer", "ready", "health"])
        | st.sampled_from(["config", "stats", "live", "..", "%2e%2e", "", "\x00", "metrics"])
        | st.text(max_size=6),
        max_size=6,
    ).map(lambda parts: "/" + "/".join(parts)),
    authorization=st.none() | st.binary(max_size=40) | st.just(f"Bearer {TOKEN}".encode()),
)
def test_any_route_never_answers_5xx(
    served: tuple[EasApp, BlockingPortal], method: str, path: str, authorization: bytes | None
) -> None:
    headers = [] if authorization is None else [(b"authorization", authorization)]
    answer = _call(served, method, path, headers, [b""])
    status, _, body = answer
    if path == "/v2/health/ready" or path.rstrip("/").endswith("/ready"):
        assert status != 500, body
    else:
        _assert_refused_cleanly(answer, (method, path))


def test_declared_huge_body_is_refused_before_reading(
    served: tuple[EasApp, BlockingPortal],
) -> None:
    headers = [(b"authorization", f"Bearer {TOKEN}".encode()), (b"content-length", b"1" * 30)]
    status, _, body = _call(served, "POST", "/v2/models/m/infer", headers, [b"{}"])
    assert status == 413, body
    chunks = [b"\0" * 8192] * 64  # 512 KiB, streamed past the 64 KiB limit
    status, _, body = _call(served, "POST", "/v2/models/m/infer", headers[:1], chunks)
    assert status == 413, body
    _still_serves(served)


def test_the_server_still_serves_after_the_fuzzing(served: tuple[EasApp, BlockingPortal]) -> None:
    _still_serves(served)


# ------------------------------------------------------------------------------ schemathesis

_TENSOR = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string", "enum": ["FP32", "FP64", "INT64", "BYTES", "BOOL", "UINT8"]},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "data": {"type": "array", "items": {}},
        "parameters": {"type": "object"},
    },
}
_INFER = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {
            "type": "object",
            "properties": {
                "priority": {"type": "integer"},
                "timeout": {"type": "integer"},
                "binary_data_output": {"type": "boolean"},
            },
        },
        "inputs": {"type": "array", "items": _TENSOR},
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
            },
        },
    },
}


def _op(summary: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {"200": {"description": "ok"}, "default": {"description": "an error"}},
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def _param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


OIP_SCHEMA: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "eas-server (Open Inference Protocol)", "version": "2"},
    "paths": {
        "/v2": {"get": _op("server metadata")},
        "/v2/health/live": {"get": _op("liveness")},
        "/v2/health/ready": {"get": _op("readiness")},
        "/v2/models/stats": {"get": _op("statistics of every model")},
        "/v2/models/{name}": {"parameters": [_param("name")], "get": _op("model metadata")},
        "/v2/models/{name}/ready": {"parameters": [_param("name")], "get": _op("model ready")},
        "/v2/models/{name}/config": {"parameters": [_param("name")], "get": _op("config")},
        "/v2/models/{name}/stats": {"parameters": [_param("name")], "get": _op("statistics")},
        "/v2/models/{name}/infer": {
            "parameters": [_param("name")],
            "post": _op("inference", _INFER),
        },
        "/v2/models/{name}/versions/{version}": {
            "parameters": [_param("name"), _param("version")],
            "get": _op("version metadata"),
        },
        "/v2/models/{name}/versions/{version}/infer": {
            "parameters": [_param("name"), _param("version")],
            "post": _op("inference on a version", _INFER),
        },
    },
}

SCHEMATHESIS_EXAMPLES = 60  # per operation and mode; AUTOAI_FUZZ_EXAMPLES=5000 for a long run


def _request(case: schemathesis.Case[Any]) -> dict[str, Any]:
    kwargs = case.as_transport_kwargs(base_url="http://eas", headers=AUTH)
    allowed = {"method", "url", "headers", "data", "params", "json"}
    prepared = requests.Request(**{k: v for k, v in kwargs.items() if k in allowed}).prepare()
    body = prepared.body.encode() if isinstance(prepared.body, str) else prepared.body
    return {
        "method": prepared.method,
        "url": prepared.url,
        "headers": dict(prepared.headers),
        "content": body or b"",
    }


@asynccontextmanager
async def _client(app: EasApp) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://eas") as client:
        yield client


def test_schemathesis_finds_no_5xx(served: tuple[EasApp, BlockingPortal]) -> None:
    app, portal = served
    count = examples(SCHEMATHESIS_EXAMPLES)
    schema = schemathesis.openapi.from_dict(OIP_SCHEMA)
    results = list(schema.get_all_operations())
    operations = [r.ok() for r in results if isinstance(r, Ok)]
    assert len(operations) == len(results) == 11
    with portal.wrap_async_context_manager(_client(app)) as client:
        send: Callable[..., httpx.Response] = lambda **kw: portal.call(  # noqa: E731
            partial(client.request, **kw)
        )
        for operation in operations:
            names = {p.name for p in operation.path_parameters}
            fixed = {k: v for k, v in {"name": "m", "version": "1"}.items() if k in names}
            modes = [GenerationMode.POSITIVE]
            if operation.body:
                modes.append(GenerationMode.NEGATIVE)
            strategies = [operation.as_strategy(m) for m in modes]
            if fixed:
                strategies += [operation.as_strategy(m, path_parameters=fixed) for m in modes]

            @hypothesis.settings(
                max_examples=count,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=st.one_of(strategies))
            def fuzz(case: schemathesis.Case[Any]) -> None:
                answer = send(**_request(case))
                if answer.status_code == 503 and answer.request.url.path.endswith("/ready"):
                    return
                case.validate_response(answer, checks=[not_a_server_error])
                if answer.status_code >= 400:
                    assert isinstance(answer.json()["error"], str), answer.text

            fuzz()
    _still_serves(served)
