"""schemathesis against the control plane's own OpenAPI schema, in process: no 5xx, every
answer in the shape its schema documents (refusals: ``{"error", "detail"}``), and every body the
schema calls invalid refused.

The request bodies are the schema models (``DeploySpec``, ``ScaleRequest``, ``PublishRequest``,
``RollbackRequest``), so cases are generated from their fields: positive ones, and negative ones
wherever a body or query can be made invalid. They are encoded by ``requests`` and sent through
``httpx.ASGITransport`` to an app whose lifespan this test runs (schemathesis' own ASGI client
would start a second lifespan it keeps until exit). One tiny model is registered, and half of the
cases of routes other than deploy name it, so that validation past "no such model" is reached too;
deploy cases never name it, so no instance is ever started (checked at the end). Registration
(``POST /api/v1/models``) reads its body itself and would fetch whatever URI a case names: its
bodies are drawn by ``test_no_5xx_on_registration_bodies`` instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
import requests
import schemathesis
from anyio.from_thread import start_blocking_portal
from fastapi import FastAPI
from hypothesis import HealthCheck, given, strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok

from autoai.api import ControlSettings, create_app
from config_store import open_store
from tests.fixtures import onnx_models
from tests.fixtures.fuzzing import examples
from tests.fixtures.system import kill_recorded_instances

from .conftest import AUTH

pytestmark = pytest.mark.slow

EXAMPLES = examples(50)  # per operation and mode: the CI run stays well under a minute
REGISTER = ("POST", "/api/v1/models")

Send = Callable[..., httpx.Response]


@asynccontextmanager
async def _serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://control") as client:
            yield client


@pytest.fixture
def served(settings: ControlSettings) -> Iterator[tuple[FastAPI, Send]]:
    """The app with its lifespan on a portal thread, and a blocking ``send(**request)``."""
    app = create_app(settings)
    try:
        with (
            start_blocking_portal() as portal,
            portal.wrap_async_context_manager(_serve(app)) as client,
        ):

            def send(**request: Any) -> httpx.Response:
                return portal.call(partial(client.request, **request))

            yield app, send
    finally:
        kill_recorded_instances(settings.store_url)


def _request(case: schemathesis.Case[Any]) -> dict[str, Any]:
    """The case as ``requests`` would send it (JSON, multipart, raw bytes), for httpx."""
    kwargs = case.as_transport_kwargs(base_url="http://control", headers=AUTH)
    allowed = {"method", "url", "headers", "files", "data", "params", "cookies", "json"}
    prepared = requests.Request(**{k: v for k, v in kwargs.items() if k in allowed}).prepare()
    body = prepared.body.encode() if isinstance(prepared.body, str) else prepared.body
    return {
        "method": prepared.method,
        "url": prepared.url,
        "headers": dict(prepared.headers),
        "content": body or b"",
    }


def _strategy(operation: Any) -> st.SearchStrategy[schemathesis.Case[Any]]:
    modes = [GenerationMode.POSITIVE]
    if operation.body or list(operation.query):  # string path parameters cannot be made invalid
        modes.append(GenerationMode.NEGATIVE)
    names = {p.name for p in operation.path_parameters}
    known = {"name": "tagger", "version": "1"}
    fixed = {k: v for k, v in known.items() if k in names}
    strategies = [operation.as_strategy(mode) for mode in modes]
    if fixed and not operation.path.endswith("/deploy"):
        strategies += [operation.as_strategy(mode, path_parameters=fixed) for mode in modes]
    return st.one_of(strategies)


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


def _check(case: schemathesis.Case[Any], answer: httpx.Response) -> None:
    case.validate_response(answer, checks=CHECKS)
    if answer.status_code >= 400:
        body = answer.json()
        assert isinstance(body, dict), answer.text
        assert {"error", "detail"} <= body.keys(), answer.text


def test_no_5xx_on_any_operation(
    served: tuple[FastAPI, Send], settings: ControlSettings, tmp_path: Path
) -> None:
    app, send = served
    model = onnx_models.tagged(tmp_path, 1.0)
    body = {"name": "tagger", "uri": f"file://{model}"}
    assert send(method="POST", url="/api/v1/models", json=body, headers=AUTH).status_code == 201
    schema = schemathesis.openapi.from_dict(app.openapi())
    results = list(schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == len(results) >= 12  # schemathesis could read every operation
    operations = [op for op in operations if (op.method.upper(), op.path) != REGISTER]
    # deletions last, so that the registered model is there for the other routes' cases
    operations.sort(key=lambda op: op.method.upper() == "DELETE")
    sent: Counter[str] = Counter()
    for operation in operations:

        @hypothesis.settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=_strategy(operation))
        def fuzz(case: schemathesis.Case[Any]) -> None:
            sent[f"{case.operation.method.upper()} {case.operation.path}"] += 1
            _check(case, send(**_request(case)))

        fuzz()
    print(f"\nschemathesis: {sum(sent.values())} cases over {len(sent)} operations")
    for name, count in sorted(sent.items()):
        print(f"  {count:5d}  {name}")
    bodies = [n for n in sent if n.split()[0] in ("POST", "PATCH") and "/models/{" in n]
    assert len(bodies) >= 4, sent  # deploy, scale, publish, rollback were all fuzzed
    with open_store(settings.store_url, snapshot_dir=False) as store:
        assert [k for k in store.keys("control") if k.startswith("deployment.")] == []


def _uris(directory: Path) -> st.SearchStrategy[str]:
    # file:// stays under the test's directory: a random path could name /dev/zero
    local = st.text(max_size=20).map(lambda rest: f"file://{directory}/{rest}")
    refused = st.text(max_size=20).map(lambda rest: f"http://127.0.0.1:1/{rest}")
    return st.one_of(local, refused, st.text(max_size=30))


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


def test_no_5xx_on_registration_bodies(served: tuple[FastAPI, Send], tmp_path: Path) -> None:
    """``POST /api/v1/models`` reads its body itself (JSON or multipart), so its schema has none
    for schemathesis to fuzz: hypothesis draws the bodies here."""
    _, send = served
    (tmp_path / "not-onnx").write_bytes(b"\x08\x01garbage")
    names = st.one_of(st.just("tagger"), st.text(max_size=70))
    bodies = st.one_of(
        st.fixed_dictionaries({"name": names, "uri": _uris(tmp_path)}).map(lambda b: {"json": b}),
        JSON.map(lambda b: {"json": b}),
        st.tuples(names, st.binary(max_size=512)).map(
            lambda nf: {"data": {"name": nf[0]}, "files": {"file": ("m.onnx", nf[1])}}
        ),
        st.binary(max_size=256).map(
            lambda raw: {
                "data": raw,
                "headers": {"Content-Type": "multipart/form-data; boundary=b"},
            }
        ),
    )

    @hypothesis.settings(
        max_examples=examples(150),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(request=bodies)
    def fuzz(request: dict[str, Any]) -> None:
        headers = {**AUTH, **request.pop("headers", {})}
        prepared = requests.Request("POST", "http://control/api/v1/models", headers, **request)
        ready = prepared.prepare()
        body = ready.body.encode() if isinstance(ready.body, str) else ready.body
        answer = send(
            method="POST", url=ready.url, headers=dict(ready.headers), content=body or b""
        )
        assert answer.status_code < 500, (request, answer.text)
        if answer.status_code >= 400:
            assert {"error", "detail"} <= answer.json().keys(), answer.text

    fuzz()


def test_a_malformed_uri_is_a_400(served: tuple[FastAPI, Send]) -> None:
    _, send = served
    body = {"name": "tagger", "uri": "http://["}
    assert send(method="POST", url="/api/v1/models", json=body, headers=AUTH).status_code == 400


def test_a_nul_byte_in_a_file_uri_is_a_400(served: tuple[FastAPI, Send]) -> None:
    _, send = served
    body = {"name": "tagger", "uri": "file:///tmp/a\x00b"}
    assert send(method="POST", url="/api/v1/models", json=body, headers=AUTH).status_code == 400


def test_a_control_character_in_an_http_uri_is_a_400(served: tuple[FastAPI, Send]) -> None:
    _, send = served
    body = {"name": "tagger", "uri": "http://127.0.0.1:1/\x1f"}
    assert send(method="POST", url="/api/v1/models", json=body, headers=AUTH).status_code == 400
