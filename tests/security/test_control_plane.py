"""The control plane's security claims (docs/security.md): the admin token (401 / 403, never
logged), bounded uploads, names validated on every route, loopback by default."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from autoai.api import ControlSettings, create_app
from autoai.cli._up import _redacted, up_command
from config_store import open_store
from eas_server._settings import ServerSettings
from tests.fixtures import onnx_models

pytestmark = pytest.mark.anyio

TOKEN = "admin-7f3c-never-logged"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings(tmp_path: Path) -> ControlSettings:
    return ControlSettings(
        store_url=f"sqlite:///{tmp_path / 'store.db'}",
        repo_dir=tmp_path / "repo",
        run_dir=tmp_path / "run",
        admin_token=TOKEN,
        reconcile_interval=0,
    )


@pytest.fixture
async def client(settings: ControlSettings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://control") as c:
            yield c


async def test_writes_need_the_admin_token_and_it_is_never_logged(
    client: httpx.AsyncClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    model = onnx_models.identity(tmp_path)
    body = {"name": "ident", "uri": f"file://{model}"}
    wrong = [f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer \xe9", TOKEN, f"Basic {TOKEN}"]
    assert (await client.post("/api/v1/models", json=body)).status_code == 401
    for header in wrong:
        raw = header.encode("latin-1")  # a non-ASCII byte too, as a client may send
        answer = await client.post("/api/v1/models", json=body, headers={b"Authorization": raw})
        assert answer.status_code in (401, 403), (header, answer.text)
        assert TOKEN not in answer.text
    assert (await client.post("/api/v1/models", json=body, headers=AUTH)).status_code == 201
    assert (await client.delete("/api/v1/models/ident/versions/1")).status_code == 401
    answer = await client.delete(
        "/api/v1/models/ident/versions/1", headers={"Authorization": "Bearer nope"}
    )
    assert answer.status_code == 403
    assert TOKEN not in caplog.text
    assert TOKEN[:-1] not in caplog.text


TRAVERSAL = ["..", "%2e%2e", "..%2f..%2fetc", "%2e%2e%2fpasswd", "%00", "a%00b", "x" * 300, "%2F"]


async def test_names_and_versions_with_traversal_are_refused(
    client: httpx.AsyncClient, settings: ControlSettings, tmp_path: Path
) -> None:
    model = onnx_models.identity(tmp_path)
    for name in ["../escape", "/abs", "a\x00b", "..", "x" * 300, "A", "a/b"]:
        answer = await client.post(
            "/api/v1/models", json={"name": name, "uri": f"file://{model}"}, headers=AUTH
        )
        assert answer.status_code == 400, (name, answer.text)
    files = {"file": ("../../../../tmp/evil.onnx", model.read_bytes())}
    answer = await client.post("/api/v1/models", data={"name": "ok"}, files=files, headers=AUTH)
    assert answer.status_code == 201, answer.text
    assert Path(answer.json()["path"]).resolve().is_relative_to(settings.repo_dir.resolve())
    for bad in TRAVERSAL:
        for path in [
            f"/api/v1/models/{bad}",
            f"/api/v1/models/ok/versions/{bad}",
            f"/api/v1/models/{bad}/versions/1",
            f"/api/v1/deployments/{bad}",
            f"/api/v1/models/{bad}/deploy",
        ]:
            for method in ("GET", "DELETE", "POST"):
                answer = await client.request(method, path, headers=AUTH, json={})
                assert answer.status_code < 500, (method, path, answer.text)
                if answer.request.url.raw_path.decode() == path:  # not a dot segment httpx folded
                    assert answer.status_code >= 300, (method, path, answer.text)
    with open_store(settings.store_url, snapshot_dir=False) as store:
        assert sorted(store.keys("control")) == ["model.ok"]
    assert not Path("/tmp/evil.onnx").exists()


async def test_a_declared_huge_upload_is_refused_before_reading(client: httpx.AsyncClient) -> None:
    headers = {
        **AUTH,
        "Content-Type": "multipart/form-data; boundary=b",
        "Content-Length": str(3 << 30),
    }

    async def trickle() -> AsyncIterator[bytes]:
        yield b"--b\r\n"  # the app must answer without waiting for the 3 GiB

    answer = await client.post("/api/v1/models", content=trickle(), headers=headers)
    assert answer.status_code == 413, answer.text
    assert answer.json()["detail"]["limit"] >= 2 << 30


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/api/v1/models", 413),  # a JSON registration (by URI): 1 MiB, not the upload's cap
        ("/api/v1/models/m/publish", 413),
        ("/api/v1/models/m/versions/1/deploy", 413),
        ("/api/v1/nowhere", 404),  # no route reads it, so none buffers it
    ],
)
async def test_a_chunked_json_body_past_1_mib_is_refused_while_streaming(
    client: httpx.AsyncClient, path: str, code: int
) -> None:
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"name": "x", "uri": "'
        while sent < 64 << 20:  # stops by itself, so a failing test cannot hang
            sent += 1 << 16
            yield b"a" * (1 << 16)

    answer = await client.post(path, content=endless(), headers=AUTH)
    assert answer.status_code == code, answer.text
    assert sent < 4 << 20  # refused after about 1 MiB, not after reading everything


async def test_a_declared_large_body_is_413_before_the_token_is_checked(
    client: httpx.AsyncClient,
) -> None:
    headers = {"Content-Type": "application/json", "Content-Length": str(2 << 20)}

    async def one_chunk() -> AsyncIterator[bytes]:
        yield b"{"

    answer = await client.post("/api/v1/models/m/publish", content=one_chunk(), headers=headers)
    assert answer.status_code == 413, answer.text
    assert answer.json()["detail"] == {"limit": 1 << 20}


@pytest.mark.parametrize("uri", ["file:///dev/zero", "file:///dev/urandom", "file:///proc/self"])
async def test_a_uri_naming_a_device_or_directory_is_refused(
    client: httpx.AsyncClient, uri: str
) -> None:
    answer = await client.post("/api/v1/models", json={"name": "dev", "uri": uri}, headers=AUTH)
    assert answer.status_code == 400, answer.text


async def test_a_fifo_uri_is_refused_without_blocking(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # so that opening it to read never blocks
    try:
        answer = await client.post(
            "/api/v1/models", json={"name": "f", "uri": f"file://{fifo}"}, headers=AUTH
        )
    finally:
        os.close(writer)
    assert answer.status_code == 400, answer.text


def test_everything_binds_loopback_by_default(tmp_path: Path) -> None:
    assert ControlSettings().host == "127.0.0.1"
    assert inspect.signature(up_command).parameters["host"].default == "127.0.0.1"
    model = onnx_models.identity(tmp_path)
    assert ServerSettings(model=str(model), name="m").host == "127.0.0.1"


def test_autoai_up_never_prints_store_passwords() -> None:
    shown = _redacted("zk://autoai:w-secret@h1:2181,h2/c?reader=sdk:r-secret&session_timeout=4")
    assert "w-secret" not in shown and "r-secret" not in shown
    assert shown == "zk://autoai:***@h1:2181,h2/c?reader=sdk:***&session_timeout=4"
    assert _redacted("sqlite:///var/x.db") == "sqlite:///var/x.db"
