"""Real eas-server processes for tests: started by command line, read their 'listening on' line,
stopped by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fixtures import onnx_models


class ServerProcess:
    """One ``eas-server`` subprocess."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "eas_server", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"eas-server did not start: {line!r} {self.stderr()}")
        self.url = line.removeprefix("listening on ")
        self.address = self.url.removeprefix("http://")

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return ""
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return self.proc.returncode


StartServer = Callable[..., ServerProcess]


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    started: list[ServerProcess] = []

    def start(
        model: Path | str, *args: str, name: str = "m", env: dict[str, str] | None = None
    ) -> ServerProcess:
        server = ServerProcess(["--model", str(model), "--name", name, "--port", "0", *args], env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "tiny_bert": onnx_models.tiny_bert(d),
        "identity": onnx_models.identity(d),
        "multi_dtype": onnx_models.multi_dtype(d),
        "string_identity": onnx_models.string_identity(d),
        "no_batch": onnx_models.no_batch(d),
        "failing": onnx_models.failing(d),
        "classifier": onnx_models.classifier(d),
    }


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)
