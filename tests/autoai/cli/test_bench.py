"""``autoai bench`` against a live eas-server (direct with --url, and through the SDK with a
store): plausible numbers on both sides, the open loop, the JSON schema, the plot, Ctrl-C, and
bad input as one line with exit code 2."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner, Result

from autoai.bench import JSON_SCHEMA
from autoai.cli import app
from autoai.cli._bench import parse_duration, parse_levels, report_table
from autoai.cli._errors import BadUsage
from config_store import open_store
from tests.autoai.bench.test_report import _report, validate
from tests.fixtures import onnx_models
from tests.fixtures.servers import ServerProcess
from tests.fixtures.system import served_requests, wait

pytestmark = pytest.mark.slow

SHORT = "--duration 2s --warmup 0.5s"


@dataclass
class Served:
    store: str
    url: str


@contextlib.contextmanager
def serve_tagger(tmp: Path) -> Iterator[Served]:
    """``tagger`` version 1 (y = x + 1, x FP32 [batch, n]) on an eas-server, registered in an
    embedded store under ``tmp`` with its route table published."""
    store_url = f"sqlite:///{tmp / 'store.db'}"
    store = open_store(store_url, snapshot_dir=tmp / "snap")
    model = onnx_models.tagged(tmp, 1.0)
    server = ServerProcess(
        [
            *("--model", str(model), "--name", "tagger", "--version", "1", "--port", "0"),
            *("--store", store_url, "--max-batch-timeout-ms", "1"),
        ],
        env={"HOME": str(tmp)},
    )
    try:
        wait(lambda: bool(store.instances("tagger-1")), 20, "tagger-1 to register", step=0.05)
        table = {
            "schema_version": 1,
            "model": "tagger",
            "revision": 0,
            "routes": [{"version": "1", "weight": 100, "service": "tagger-1", "processor": "onnx"}],
            "signature": {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, -1]}]},
        }
        store.publish("tagger", json.dumps(table).encode(), group="models")
        yield Served(store_url, server.url)
    finally:
        server.stop()
        store.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve_tagger(tmp_path_factory.mktemp("bench")) as found:
        yield found


def bench(args: str) -> Result:
    return CliRunner().invoke(
        app, ["bench", *shlex.split(args)], env={"COLUMNS": "200"}, catch_exceptions=False
    )


def _doc(result: Result) -> Any:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
    doc = json.loads(result.stdout)
    validate(doc, JSON_SCHEMA)
    return doc


def _both_sides_agree(step: dict[str, Any]) -> None:
    client, server = step["client"], step["server"]
    assert client["errors"] == {} and server["errors"] == {}
    assert client["requests"] > 50
    assert abs(server["qps"] - client["qps"]) <= 0.10 * client["qps"], step
    assert 0 < server["rt_ms"]["mean"] <= client["rt_ms"]["max"]
    assert client["rt_ms"]["p50"] <= client["rt_ms"]["p90"] <= client["rt_ms"]["p99"]
    assert server["batch_size"] >= 1.0
    assert sum(server["batches"].values()) > 0
    assert step["generator"]["cpu_percent"] > 0


def test_direct_closed_loop_json_and_plot(served: Served, tmp_path: Path) -> None:
    png = tmp_path / "bench.png"
    doc = _doc(bench(f"tagger --url {served.url} --concurrency 1,8 {SHORT} --json --plot {png}"))
    assert doc["target"] == {"kind": "url", "address": served.url}
    assert doc["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [1, 8], "source": "drawn"}]
    assert [s["concurrency"] for s in doc["steps"]] == [1, 8]
    for step in doc["steps"]:
        assert step["mode"] == "closed" and not step["interrupted"]
        assert step["server"]["instances"] == [served.url]
        _both_sides_agree(step)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size < 200_000


def test_open_loop_at_a_fixed_rate(served: Served) -> None:
    doc = _doc(bench(f"tagger --url {served.url} --rate 150 {SHORT} --batch 2 --json"))
    (step,) = doc["steps"]
    assert (step["mode"], step["rate"], step["max_in_flight"]) == ("open", 150.0, 256)
    assert doc["inputs"][0]["shape"] == [2, 8]
    assert step["client"]["qps"] == pytest.approx(150, rel=0.2)  # Poisson: ~300 arrivals
    _both_sides_agree(step)


def test_through_the_sdk_the_instances_come_from_the_store(served: Served) -> None:
    doc = _doc(
        bench(f"tagger --store {served.store} --concurrency 4 {SHORT} --json-tensors --json")
    )
    assert doc["target"] == {"kind": "sdk", "address": served.store}
    assert doc["encoding"] == "json"
    (step,) = doc["steps"]
    assert step["server"]["instances"] == [served.url]
    _both_sides_agree(step)


def test_ctrl_c_prints_what_was_measured(served: Served, tmp_path: Path) -> None:
    args = "--concurrency 2,4 --duration 30s --warmup 0.2s --json"
    before = served_requests(served.url)
    proc = subprocess.Popen(
        [sys.executable, "-m", "autoai.cli", "bench", "tagger", "--url", served.url, *args.split()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    # start-up takes what it takes: wait until the server sees the load (the warmup began),
    # then give the 0.2 s warmup and about a second of window (a sleep can only be longer)
    wait(lambda: served_requests(served.url) > before or proc.poll() is not None, 60, "the load")
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    doc = json.loads(out)
    validate(doc, JSON_SCHEMA)
    assert doc["interrupted"] is True
    (step,) = doc["steps"]  # the second step never ran
    assert step["interrupted"] and 0.1 < step["window_s"] < 5
    assert step["client"]["requests"] > 0
    assert "interrupted" in err


def test_the_table_shows_both_sides_per_step() -> None:
    console = Console(record=True, width=200)
    console.print(report_table(_report()))
    text = console.export_text()
    assert "client" in text and "server" in text
    assert "c=4" in text and "100/s (stopped)" in text
    assert "HTTP 503 2" in text and "queue_full 2" in text


def _error(result: Result) -> str:
    assert result.exit_code == 2, f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_bad_input_is_one_line_and_exit_2(served: Served, tmp_path: Path) -> None:
    url, store = served.url, served.store
    assert "refuses model 'nope' (HTTP 404)" in _error(bench(f"nope --url {url}"))
    assert "model 'nope' is not published" in _error(bench(f"nope --store {store}"))
    assert "no version '9'" in _error(bench(f"tagger --store {store} --version 9"))
    assert "nothing answers at http://127.0.0.1:9" in _error(
        bench("tagger --url http://127.0.0.1:9")
    )
    assert "expected http://HOST:PORT" in _error(bench("tagger --url ftp://x"))
    wrong = _error(bench(f"tagger --url {url} --input x=[[1,2]] --input y=[1]"))
    assert "unknown input 'y'" in wrong
    assert "datatype" in _error(bench(f"tagger --store {store} --input x=@{_npy(tmp_path)}"))
    assert "rank 1" in _error(bench(f"tagger --url {url} --input x=[1,2]"))
    assert "cannot read" in _error(bench(f"tagger --url {url} --input x=@{tmp_path / 'no.npy'}"))
    assert "--duration '3 days'" in _error(bench(f"tagger --url {url} --duration '3 days'"))
    assert "not both" in _error(bench(f"tagger --url {url} --store {store}"))
    assert "one value" in _error(bench(f"tagger --url {url} --rate 10 --concurrency 1,2"))
    assert "> 0" in _error(bench(f"tagger --url {url} --concurrency 0"))


def _npy(tmp_path: Path) -> Path:
    import numpy as np

    path = tmp_path / "ints.npy"
    np.save(path, np.ones((2, 4), np.int64))
    return path


def test_durations_and_levels() -> None:
    assert parse_duration("--duration", "30s") == 30
    assert parse_duration("--duration", "500ms") == 0.5
    assert parse_duration("--duration", "2m") == 120
    assert parse_duration("--duration", "1.5") == 1.5
    assert parse_levels("--concurrency", "1, 8,32", integer=True) == [1, 8, 32]
    assert parse_levels("--rate", "12.5", integer=False) == [12.5]
    for bad in ("", "-1s", "1h", "s"):
        with pytest.raises(BadUsage):
            parse_duration("--duration", bad)
    for bad in ("", "1,,2", "2.5", "x"):
        with pytest.raises(BadUsage):
            parse_levels("--concurrency", bad, integer=True)
