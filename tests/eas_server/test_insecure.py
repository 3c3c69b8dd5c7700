"""Beyond loopback only with a token, or with ``--insecure`` said out loud: the decision, a real
refusal, and real starts showing the warning and ``eas_build_info``'s ``insecure`` label."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from eas_server._server import build_app
from eas_server._settings import ServerSettings
from eas_server.processors import Processor, create_processor

from .conftest import StartServer


@pytest.fixture(autouse=True)
def _no_token_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The servers started here inherit this environment: no token or flag from outside."""
    for name in ("EAS_TOKEN", "EAS_INSECURE", "EAS_HOST"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("host", "token", "exposed"),
    [
        ("127.0.0.1", None, False),
        ("localhost", None, False),
        ("::1", None, False),
        ("0.0.0.0", None, True),
        ("::", None, True),
        ("10.0.0.1", None, True),
        ("model-server.example.com", None, True),
        ("0.0.0.0", "", True),  # an empty token guards nothing (the model routes skip it)
        ("0.0.0.0", "s3cret", False),
        ("10.0.0.1", "s3cret", False),
    ],
)
def test_exposed_without_token(
    models: dict[str, Path], host: str, token: str | None, exposed: bool
) -> None:
    flags = {"model": str(models["identity"]), "name": "m", "host": host, "token": token}
    settings = ServerSettings.load(flags)
    assert settings.exposed_without_token is exposed
    assert settings.insecure is False


def test_insecure_comes_from_the_flag_or_eas_insecure(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    flags = {"model": str(models["identity"]), "name": "m", "host": "0.0.0.0"}
    assert ServerSettings.load({**flags, "insecure": True}).insecure
    monkeypatch.setenv("EAS_INSECURE", "true")
    assert ServerSettings.load(flags).insecure


def _metric_labels(text: str, name: str) -> list[dict[str, str]]:
    return [
        sample.labels
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def test_a_non_loopback_host_without_a_token_is_refused_in_one_line(
    models: dict[str, Path],
) -> None:
    args = ["--model", str(models["identity"]), "--name", "x", "--host", "0.0.0.0"]
    refused = subprocess.run(
        [sys.executable, "-m", "eas_server", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("EAS_")},
    )
    assert refused.returncode == 2, refused.stderr
    assert refused.stdout == ""  # no 'listening on': it refused before binding anything
    (line,) = refused.stderr.splitlines()
    assert line.startswith("eas-server: refusing to listen on 0.0.0.0 without a token")
    assert "EAS_TOKEN" in line and "--insecure" in line


def test_insecure_starts_beyond_loopback_with_a_warning_and_says_so_in_metrics(
    start_server: StartServer, models: dict[str, Path]
) -> None:
    local = start_server(models["identity"])  # loopback without a token: starts as ever
    assert local.url.startswith("http://127.0.0.1:")
    (build,) = _metric_labels(httpx.get(f"{local.url}/metrics").text, "eas_build_info")
    assert build["insecure"] == "false"

    server = start_server(models["identity"], "--host", "0.0.0.0", "--insecure")
    assert server.url.startswith("http://0.0.0.0:")
    port = server.url.rsplit(":", 1)[1]
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text  # reached over loopback
    finally:
        server.terminate()
        server.proc.wait(30)
    (build,) = _metric_labels(text, "eas_build_info")
    assert build["insecure"] == "true" and build["model"] == "m" and build["server_version"]
    (warning,) = [line for line in server.stderr().splitlines() if "WARNING" in line]
    assert "--insecure: serving on 0.0.0.0 without a token" in warning


@pytest.fixture(scope="module")
def identity(models: dict[str, Path]) -> Iterator[Processor]:
    processor = create_processor("onnx", str(models["identity"]), workers=1, intra_op_threads=1)
    processor.load()
    try:
        yield processor
    finally:
        processor.close()


@pytest.mark.parametrize(
    ("flags", "label"),
    [
        ({}, "false"),
        ({"host": "0.0.0.0", "insecure": True}, "true"),
        ({"host": "0.0.0.0", "insecure": True, "token": "s3cret"}, "false"),  # nothing open
        ({"insecure": True}, "false"),  # on loopback the flag opens nothing
    ],
)
def test_the_build_info_label_says_whether_it_serves_the_network_without_a_token(
    models: dict[str, Path], identity: Processor, flags: dict[str, object], label: str
) -> None:
    settings = ServerSettings.load({"model": str(models["identity"]), "name": "m", **flags})
    registry = CollectorRegistry()
    build_app(settings, identity, registry)
    labels = {"model": "m", "version": "1", "processor": "onnx", "insecure": label}
    (sample,) = [
        s for family in registry.collect() for s in family.samples if s.name == "eas_build_info"
    ]
    assert sample.value == 1 and sample.labels.items() >= labels.items()
