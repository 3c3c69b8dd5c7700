"""A real control plane (``autoai up`` through ``autoai.testing``, embedded store) per test module,
and a runner of the CLI against it; at the end the control plane is stopped by its PID and every
instance recorded in its store is killed."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from autoai.api import ControlSettings
from autoai.cli import app
from autoai.testing import ControlPlaneProcess, kill_recorded_instances

TOKEN = "cli-s3cret"


@dataclass
class ControlPlane:
    """A running control plane and how to drive the CLI against it."""

    url: str
    settings: ControlSettings
    log: Path

    def cli(self, command: str, *, token: str | None = TOKEN, url: str | None = None) -> Result:
        """``autoai COMMAND`` (split as a shell would) in process, with AUTOAI_URL and
        AUTOAI_TOKEN set (``token=None``: unset)."""
        env = {"AUTOAI_URL": url or self.url, "AUTOAI_TOKEN": token, "COLUMNS": "200"}
        return CliRunner().invoke(app, shlex.split(command), env=env, catch_exceptions=False)


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    root = tmp_path_factory.mktemp("control")
    settings = ControlSettings(
        store_url=f"sqlite:///{root / 'store.db'}",
        repo_dir=root / "repo",
        run_dir=root / "run",
        admin_token=TOKEN,
    )
    plane = ControlPlaneProcess(
        root,
        store_url=settings.store_url,
        token=TOKEN,
        run_dir=settings.run_dir,
        repo=settings.repo_dir,
        env={"HOME": str(root)},
        log=root / "control.log",
    )
    with plane.start():
        try:
            yield ControlPlane(plane.url, settings, plane.log)
        finally:
            plane.stop()
            kill_recorded_instances(settings.store_url)
