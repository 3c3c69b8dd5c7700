"""The control plane in process (httpx.ASGITransport) with its lifespan, on an embedded store;
every instance a test deployed is stopped by PID afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from autoai.api import ControlSettings
from tests.fixtures.system import control_api

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
    async with control_api(settings) as c:
        yield c
