"""The admin token on every write route of the OpenAPI schema (401 without, 403 with another), and
on reads only with ``protect_reads``; /healthz stays open."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI

from autoai.api import ControlSettings, create_app

from .conftest import AUTH, TOKEN

pytestmark = pytest.mark.anyio

WRITES = ("post", "put", "patch", "delete")
OPEN = {"/healthz"}  # liveness probes carry no token


def _routes(app: FastAPI, methods: tuple[str, ...]) -> list[tuple[str, str]]:
    """``(METHOD, path)`` of the schema's operations, path parameters filled in."""
    found = []
    for path, operations in app.openapi()["paths"].items():
        for method in operations:
            if method in methods and path not in OPEN:
                found.append((method.upper(), re.sub(r"\{[^}]+\}", "1", path)))
    return sorted(found)


@asynccontextmanager
async def _serve(settings: ControlSettings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://control") as client:
            yield app, client


async def _call(
    client: httpx.AsyncClient, method: str, path: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    body: dict[str, object] | None = {} if method != "DELETE" else None
    return await client.request(method, path, json=body, headers=headers)


async def test_every_write_needs_the_admin_token(settings: ControlSettings) -> None:
    async with _serve(settings) as (app, client):
        writes = _routes(app, WRITES)
        assert ("POST", "/api/v1/models/1/publish") in writes
        assert ("DELETE", "/api/v1/models/1/versions/1/deploy") in writes
        assert len(writes) >= 6
        for method, path in writes:
            missing = await _call(client, method, path)
            assert missing.status_code == 401, (method, path, missing.text)
            assert set(missing.json()) == {"error", "detail"}
            wrong = await _call(client, method, path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 403, (method, path, wrong.text)
            assert "not the admin token" in wrong.json()["error"]
            right = await _call(client, method, path, headers=AUTH)
            assert right.status_code not in (401, 403, 500), (method, path, right.text)


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (b"Basic czNjcmV0", 401),
        (b"Bearer", 401),
        (b"Bearer    ", 401),
        (b"s3cret", 401),
        (b"Bearer s3cret-not", 403),
        (b"Bearer s3cre", 403),
        (b"Bearer \xc3\xa9t\xc3\xa9", 403),  # non-ASCII bytes: a refusal, not a 500
        (b"Bearer \xff", 403),
        (f"bearer {TOKEN}".encode(), 404),  # the scheme is case-insensitive: past auth
        (f"Bearer  {TOKEN} ".encode(), 404),
    ],
)
async def test_token_shapes(settings: ControlSettings, header: bytes, status: int) -> None:
    async with _serve(settings) as (_, client):
        answer = await client.delete(
            "/api/v1/models/missing/versions/1", headers={b"Authorization": header}
        )
        assert answer.status_code == status, answer.text


async def test_reads_are_open_by_default_and_protected_on_request(
    settings: ControlSettings,
) -> None:
    async with _serve(settings) as (app, client):
        reads = _routes(app, ("get",))
        assert ("GET", "/metrics") in reads and ("GET", "/api/v1/sd/prometheus") in reads
        for method, path in reads:
            answer = await client.request(method, path)
            assert answer.status_code not in (401, 403, 500), (path, answer.text)
    protected = settings.model_copy(update={"protect_reads": True})
    async with _serve(protected) as (app, client):
        for method, path in _routes(app, ("get",)):
            missing = await client.request(method, path)
            assert missing.status_code == 401, (path, missing.text)
            wrong = await client.request(method, path, headers={"Authorization": "Bearer x"})
            assert wrong.status_code == 403, (path, wrong.text)
            right = await client.request(method, path, headers=AUTH)
            assert right.status_code in (200, 404), (path, right.text)
        assert (await client.get("/healthz")).status_code == 200


async def test_without_an_admin_token_writes_are_open(settings: ControlSettings) -> None:
    async with _serve(settings.model_copy(update={"admin_token": None})) as (_, client):
        answer = await client.delete("/api/v1/models/missing/versions/1")
        assert answer.status_code == 404, answer.text
