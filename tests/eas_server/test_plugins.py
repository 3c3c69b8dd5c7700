"""Custom processors from installed packages (the ``autoai.processors`` entry-point group): a
small plugin distribution is built by the test (modules plus a ``*.dist-info`` with METADATA and
entry_points.txt) and put on the PYTHONPATH of a real eas-server process, which serves it by name
from ``--processor`` or the service JSON; a plugin that fails to import is a clear start-up error
that names it, and breaks nothing else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from eas_server import ModelLoadError, processors as registry
from eas_server.processors import create_processor, processor_names

from .conftest import StartServer

ECHO = '''
"""A processor as an EAS user writes one: upper-cases text and puts the model file's text first."""
from pathlib import Path

import numpy as np

from eas_server import InvalidInput, ModelLoadError, Processor, TensorSpec


class EchoProcessor(Processor):
    platform = "echo_platform"
    backend = "echo"

    def load(self):
        try:
            self.prefix = Path(self.model_path).read_text().strip()
        except OSError as exc:
            raise ModelLoadError(f"echo needs a prefix file: {exc}") from exc

    @property
    def inputs(self):
        return [TensorSpec("text", "BYTES", ())]

    @property
    def outputs(self):
        return [TensorSpec("echo", "BYTES", ())]

    @property
    def batchable(self):
        return True

    def run(self, inputs, worker, outputs=None):
        out = np.empty(len(inputs["text"]), dtype=object)
        for i, value in enumerate(inputs["text"]):
            if value == b"boom":
                raise InvalidInput("echo refuses 'boom'")
            out[i] = self.prefix.encode() + b":" + value.upper()
        return {"echo": out}


def make_echo(model_path, **options):
    """A factory, not a class: also allowed."""
    return EchoProcessor(model_path, **options)


def make_nothing(model_path, **options):
    return "not a processor"


class NotAProcessor:
    pass
'''

ENTRY_POINTS = """\
[autoai.processors]
echo = echo_plugin:EchoProcessor
echo_factory = echo_plugin:make_echo
nothing = echo_plugin:make_nothing
not_a_processor = echo_plugin:NotAProcessor
broken = broken_plugin:BrokenProcessor
"""


@pytest.fixture
def plugin(tmp_path: Path) -> Path:
    """A directory to put on the path: the ``echo-plugin`` distribution, installed."""
    site = tmp_path / "site"
    package = site / "echo_plugin"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(ECHO)
    (site / "broken_plugin.py").write_text('raise RuntimeError("the device driver is missing")\n')
    info = site / "echo_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return site


def _env(site: Path) -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": f"{site}{os.pathsep}{path}" if path else str(site)}


def _echo(address: str, model: str, texts: list[str]) -> list[bytes]:
    client = httpclient.InferenceServerClient(address)
    try:
        assert client.get_model_metadata(model)["platform"] == "echo_platform"
        text = httpclient.InferInput("text", [len(texts)], "BYTES")
        text.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
        result = client.infer(model, [text])
    finally:
        client.close()
    echo = result.as_numpy("echo")
    assert echo is not None
    return list(echo)


def test_a_plugin_serves_by_name(plugin: Path, tmp_path: Path, start_server: StartServer) -> None:
    prefix = tmp_path / "prefix.txt"
    prefix.write_text("hi\n")
    server = start_server(prefix, "--processor", "echo", name="echo", env=_env(plugin))
    assert _echo(server.address, "echo", ["a", "bc"]) == [b"hi:A", b"hi:BC"]


def test_the_service_json_names_a_plugin(
    plugin: Path, tmp_path: Path, start_server: StartServer
) -> None:
    prefix = tmp_path / "prefix.txt"
    prefix.write_text("svc")
    service = tmp_path / "service.json"
    service.write_text(
        json.dumps({"name": "svc", "processor": "echo_factory", "model_path": str(prefix)})
    )
    server = start_server(prefix, "--config", str(service), name="svc", env=_env(plugin))
    assert _echo(server.address, "svc", ["x"]) == [b"svc:X"]
    url = f"http://{server.address}/v2/models/svc/infer"
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["boom"]}]}
    response = httpx.post(url, json=body, timeout=30)
    assert response.status_code == 400 and response.json() == {"error": "echo refuses 'boom'"}


def _start_failure(site: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "eas_server", "--name", "m", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **_env(site)},
    )
    assert done.returncode != 0 and "listening on" not in done.stdout
    return done.stderr


def test_a_broken_plugin_is_a_clear_error(plugin: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "prefix.txt"
    prefix.write_text("p")
    stderr = _start_failure(plugin, "--model", str(prefix), "--processor", "broken")
    assert (
        "processor 'broken' cannot be loaded: entry point 'broken' = "
        "'broken_plugin:BrokenProcessor' of echo-plugin (group autoai.processors) failed to "
        "import: RuntimeError: the device driver is missing"
    ) in stderr
    stderr = _start_failure(plugin, "--model", str(tmp_path / "missing"), "--processor", "echo")
    assert "model path" in stderr and "does not exist" in stderr


def test_a_broken_plugin_breaks_nothing_else(
    plugin: Path, models: dict[str, Path], start_server: StartServer
) -> None:
    server = start_server(models["classifier"], name="plain", env=_env(plugin))
    client = httpclient.InferenceServerClient(server.address)
    try:
        assert client.get_model_metadata("plain")["platform"] == "onnxruntime_onnx"
    finally:
        client.close()


def test_entry_points_in_process(
    plugin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(plugin))
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))  # no leak
    monkeypatch.setattr(registry, "_LOADED", {})
    names = processor_names()  # listed without importing any of them
    assert {"onnx", "pipeline", "echo", "broken", "nothing"} <= set(names)
    assert "broken_plugin" not in sys.modules
    prefix = tmp_path / "prefix.txt"
    prefix.write_text("p")
    echo = create_processor("echo", str(prefix), workers=2)
    assert echo.kind == "echo" and echo.workers == 2  # kind defaults to the entry point's name
    echo.load()
    assert echo.run({"text": np.array([b"q"], dtype=object)}, 0)["echo"][0] == b"p:Q"
    again = create_processor("echo", str(prefix))  # the second time from the registry
    assert type(again) is type(echo)
    with pytest.raises(ModelLoadError, match=r"is the class NotAProcessor, which is not a sub"):
        create_processor("not_a_processor", str(prefix))
    with pytest.raises(ModelLoadError, match=r"make_nothing' of echo-plugin .* returned a str"):
        create_processor("nothing", str(prefix))
    with pytest.raises(ModelLoadError, match="failed to import: RuntimeError"):
        create_processor("broken", str(prefix))
    with pytest.raises(ModelLoadError, match=r"unknown processor 'nope'; available: .*echo"):
        create_processor("nope", str(prefix))
