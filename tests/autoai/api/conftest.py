"""The control plane in process (httpx.ASGITransport) with its lifespan, on an embedded store;
every instance a test deployed is stopped by PID afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from autoai.api import ControlSettings, create_app
from tests.fixtures.system import kill_recorded_instances

TOKEN = "s3cret"
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
    )


@pytest.fixture
async def client(settings: ControlSettings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://control") as c:
                yield c
    finally:
        kill_recorded_instances(settings.store_url)
