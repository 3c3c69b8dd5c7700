"""``autoai up`` beyond loopback: refused without an admin token in one line, before anything
listens or the store is opened; started with ``--insecure``, which it logs and shows in
``autoai_build_info``. Processes are started here and stopped by their PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from autoai.cli import app
from config_store.testing import free_ports
from tests.fixtures.system import wait

REFUSAL = (
    "error: refusing to listen on {host} without an admin token: set AUTOAI_ADMIN_TOKEN (or pass "
    "--insecure to accept unauthenticated deploys and publishes from the network)"
)


def _args(root: Path, *more: str) -> list[str]:
    return [
        "up", "--store", f"sqlite:///{root / 'store.db'}", "--repo", str(root / "repo"),
        "--run-dir", str(root / "run"), "--log-level", "warning", *more,
    ]  # fmt: skip


def _command(root: Path, port: int, *more: str) -> list[str]:
    return [sys.executable, "-m", "autoai.cli", *_args(root, "--port", str(port), *more)]


def _environ(root: Path) -> dict[str, str]:
    """This environment without any ``AUTOAI_`` setting (no admin token, no AUTOAI_INSECURE)."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith("AUTOAI_")}
    return {**kept, "HOME": str(root)}


def _refused(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.1", "control.example.com"])
def test_beyond_loopback_without_a_token_is_refused(host: str, tmp_path: Path) -> None:
    env: dict[str, str | None] = {"AUTOAI_ADMIN_TOKEN": None, "AUTOAI_INSECURE": None}
    result = CliRunner().invoke(app, _args(tmp_path, "--host", host), env=env)
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and result.stderr == REFUSAL.format(host=host) + "\n"
    assert not (tmp_path / "store.db").exists()  # refused before the store was opened


def test_the_refusal_of_a_real_process(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    refused = subprocess.run(
        _command(tmp_path, port, "--host", "0.0.0.0"),
        capture_output=True,
        text=True,
        timeout=60,
        env=_environ(tmp_path),
    )
    assert refused.returncode == 2, refused.stderr
    assert refused.stdout == ""
    assert refused.stderr.splitlines() == [REFUSAL.format(host="0.0.0.0")]
    assert _refused(port) and not (tmp_path / "store.db").exists()


class _Up:
    """``autoai up`` without an admin token, waited for over loopback, stopped by its PID."""

    def __init__(self, root: Path):
        self.root = root
        self.log = root / "control.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, *args: str) -> _Up:
        # The port is the replica's id, so a number; retried on a clash (as cli/conftest.py does).
        for _ in range(3):
            (port,) = free_ports(1)
            self.url = f"http://127.0.0.1:{port}"
            with self.log.open("ab") as log:
                self.proc = subprocess.Popen(
                    _command(self.root, port, *args),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=_environ(self.root),
                )
            wait(lambda: self._healthy() or self._exited(), 60, "autoai up")
            if not self._exited():
                return self
        raise AssertionError(f"autoai up did not start:\n{self.log.read_text()}")

    def _exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    def build_info(self) -> dict[str, str]:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        (labels,) = [
            sample.labels
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "autoai_build_info"
        ]
        return labels

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def control(tmp_path: Path) -> Iterator[_Up]:
    control = _Up(tmp_path)
    try:
        yield control
    finally:
        control.stop()


def test_loopback_without_a_token_starts(control: _Up) -> None:
    assert control.start().build_info()["insecure"] == "false"
    control.stop()
    assert "WARNING" not in control.log.read_text()


def test_insecure_starts_beyond_loopback_with_a_warning_and_says_so_in_metrics(
    control: _Up,
) -> None:
    control.start("--host", "0.0.0.0", "--insecure")  # reached over 127.0.0.1
    try:
        assert control.build_info()["insecure"] == "true"
    finally:
        control.stop()
    log = control.log.read_text()
    (warning,) = [line for line in log.splitlines() if "WARNING" in line]
    assert warning.endswith(
        "autoai.cli WARNING --insecure: listening on 0.0.0.0 without an admin token: anyone who "
        "can reach it can deploy and publish"
    ), log
