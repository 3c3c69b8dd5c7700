"""One real ``autoai up`` per module (``autoai.testing.ControlPlaneProcess``, embedded store) for
the blocking client, and the app in process (``httpx.ASGITransport``) for the asyncio one; every
instance a test deployed is killed by its recorded PID afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from autoai.api import ControlSettings, create_app
from autoai.control import AsyncControlClient, ControlClient
from autoai.testing import ControlPlaneProcess, kill_recorded_instances

TOKEN = "control-client-s3cret"


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    root = tmp_path_factory.mktemp("control")
    process = ControlPlaneProcess(root, token=TOKEN, env={"HOME": str(root)})
    try:
        yield process.start()
    finally:
        process.stop()
        kill_recorded_instances(process.store_url)


@pytest.fixture
def control(plane: ControlPlaneProcess) -> Iterator[ControlClient]:
    with plane.client() as client:
        yield client


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
async def app_transport(settings: ControlSettings) -> AsyncIterator[httpx.ASGITransport]:
    """The control plane in this process, lifespan included."""
    app = create_app(settings)
    try:
        async with app.router.lifespan_context(app):
            yield httpx.ASGITransport(app=app)
    finally:
        kill_recorded_instances(settings.store_url)


@pytest.fixture
async def acontrol(app_transport: httpx.ASGITransport) -> AsyncIterator[AsyncControlClient]:
    async with AsyncControlClient(
        "http://control", token=TOKEN, transport=app_transport, poll=0.05
    ) as client:
        yield client


def wrong_inputs(directory: Path) -> Path:
    """Blade test data whose inputs no model of these tests has: a deploy job that fails."""
    path = directory / "wrong-inputs.npz"
    np.savez(path, tokens=np.zeros((2, 8), np.int64))
    return path
