"""A real control plane (``autoai up`` in a subprocess, embedded store) per test module, and a
runner of the CLI against it; at the end the control plane is stopped by its PID and every
instance recorded in its store is killed."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner, Result

from autoai.api import ControlSettings
from autoai.cli import app
from config_store.testing import free_ports
from tests.fixtures.system import kill_recorded_instances

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


def _start(root: Path, settings: ControlSettings, port: int) -> subprocess.Popen[bytes]:
    with (root / "control.log").open("ab") as log:
        return subprocess.Popen(
            [
                sys.executable, "-m", "autoai.cli", "up", "--port", str(port),
                "--store", settings.store_url, "--repo", str(settings.repo_dir),
                "--run-dir", str(settings.run_dir), "--log-level", "warning",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "AUTOAI_ADMIN_TOKEN": TOKEN, "HOME": str(root)},
        )  # fmt: skip


def _healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> bool:
    """Whether the control plane answers /healthz before it exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    root = tmp_path_factory.mktemp("control")
    settings = ControlSettings(
        store_url=f"sqlite:///{root / 'store.db'}",
        repo_dir=root / "repo",
        run_dir=root / "run",
        admin_token=TOKEN,
    )
    # The port is the replica's id, so it must be a number: a port that was free a moment ago,
    # tried again on a clash (a pre-bound socket cannot be handed to `autoai up`).
    for _ in range(3):
        (port,) = free_ports(1)
        url = f"http://127.0.0.1:{port}"
        proc = _start(root, settings, port)
        if _healthy(url, proc):
            break
        _stop(proc)
    else:
        raise RuntimeError(f"autoai up did not start:\n{(root / 'control.log').read_text()}")
    try:
        yield ControlPlane(url, settings, root / "control.log")
    finally:
        _stop(proc)
        kill_recorded_instances(settings.store_url)
