"""The control plane in process (httpx.ASGITransport) with its lifespan, on an embedded store;
every instance a test deployed is stopped by PID afterwards."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from autoai.api import ControlSettings, create_app
from config_store import open_store

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
        _stop_recorded_instances(settings)


def _stop_recorded_instances(settings: ControlSettings) -> None:
    with open_store(settings.store_url, snapshot_dir=False) as store:
        for key in store.keys("control"):
            item = store.get(key, group="control")
            if key.startswith("deployment.") and item is not None:
                for instance in json.loads(item.content)["instances"]:
                    try:
                        os.kill(instance["pid"], signal.SIGKILL)
                    except ProcessLookupError:
                        pass
