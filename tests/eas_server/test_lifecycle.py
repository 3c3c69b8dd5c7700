"""Registration, SIGTERM drain, settings precedence, and the command line's errors."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydantic import ValidationError

from config_store import Instance, open_store
from eas_client import encode_request
from eas_server._settings import ServerSettings, load_service_json

from .conftest import StartServer, wait_until


def test_registers_once_ready_and_deregisters_on_sigterm(
    start_server: StartServer, models: dict[str, Path], tmp_path: Path
) -> None:
    url = f"sqlite://{tmp_path / 'store.db'}"
    server = start_server(models["tiny_bert"], "--store", url, "--version", "3", name="intent-cls")
    with open_store(url, snapshot_dir=False, failover_dir=False) as store:
        wait_until(lambda: bool(store.instances("intent-cls-3")))
        (inst,) = store.instances("intent-cls-3")
        assert inst.address == server.address
        assert inst.payload["model"] == "intent-cls" and inst.payload["version"] == "3"
        assert inst.payload["processor"] == "onnx" and inst.payload["weight"] == 100
        assert server.stop() == 0
        assert store.instances("intent-cls-3") == []


def test_sigterm_under_load_fails_no_request(
    start_server: StartServer, models: dict[str, Path], tmp_path: Path
) -> None:
    """Clients route by the store, as the SDK does: after SIGTERM the instance leaves the store
    first, keeps answering what is in flight or still arriving, then exits."""
    url = f"sqlite://{tmp_path / 'store.db'}"
    server = start_server(models["tiny_bert"], "--store", url, "--service", "svc", name="bert")
    live: list[Instance] = []
    ids = np.ones((1, 16), dtype=np.int64)
    body, length = encode_request({"input_ids": ids, "attention_mask": ids})
    ok = [0] * 8
    failures: list[str] = []
    stop = threading.Event()

    def client(k: int) -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                targets = list(live)
                if not targets:
                    time.sleep(0.005)
                    continue
                try:
                    r = http.post(
                        f"http://{targets[0].address}/v2/models/bert/infer",
                        content=body,
                        headers={"Inference-Header-Content-Length": str(length)},
                    )
                    if r.status_code == 200:
                        ok[k] += 1
                    else:
                        failures.append(f"{r.status_code} {r.text}")
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

    with open_store(url, snapshot_dir=False, failover_dir=False) as store:
        store.watch_instances("svc", lambda instances: live.__setitem__(slice(None), instances))
        wait_until(lambda: bool(live))
        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        wait_until(lambda: sum(ok) >= 8, timeout=60)  # under way, however loaded the machine is
        before = sum(ok)
        server.terminate()
        assert server.proc.wait(30) == 0
        stop.set()
        for t in threads:
            t.join(30)
    assert not failures, failures[:5]
    assert before > 0 and sum(ok) >= before


def test_settings_precedence_flags_env_service_json(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "service.json"
    config.write_text(
        json.dumps(
            {
                "name": "from-json",
                "processor": "onnx",
                "model_path": str(models["identity"]),
                "metadata": {
                    "instance": 2,
                    "rpc": {
                        "batching": True,
                        "max_batch_size": 8,
                        "max_batch_timeout": 3,
                        "worker_threads": 2,
                    },
                    "rpc.max_queue_size": 64,
                },
            }
        )
    )
    service = load_service_json(config)
    settings = ServerSettings.load({}, service)
    assert (settings.name, settings.max_batch_size, settings.max_batch_timeout_ms) == (
        "from-json",
        8,
        3,
    )
    assert (settings.workers, settings.max_queue_size, settings.model) == (
        2,
        64,
        str(models["identity"]),
    )
    monkeypatch.setenv("EAS_MAX_BATCH_SIZE", "16")
    assert ServerSettings.load({}, service).max_batch_size == 16
    assert ServerSettings.load({"max_batch_size": 4, "name": None}, service).max_batch_size == 4
    with pytest.raises(ValidationError, match="max_batch_size"):
        ServerSettings.load({"max_batch_size": 0}, service)
    with pytest.raises(ValidationError, match="does not exist"):
        ServerSettings.load({"model": str(tmp_path / "missing.onnx")}, service)
    config.write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_service_json(config)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eas_server", *args], capture_output=True, text=True, timeout=60
    )


def test_command_line_errors_are_one_clear_line(models: dict[str, Path], tmp_path: Path) -> None:
    missing = _cli("--model", str(tmp_path / "nope.onnx"), "--name", "x")
    assert missing.returncode == 2 and "--model: Value error, model path" in missing.stderr
    unnamed = _cli("--model", str(models["identity"]))
    assert unnamed.returncode == 2 and "missing name: give --model and --name" in unnamed.stderr
    bad = _cli("--model", str(models["identity"]), "--name", "x", "--processor", "tensorflow")
    assert bad.returncode == 2 and "unknown processor 'tensorflow'" in bad.stderr
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage")
    broken = _cli("--model", str(corrupt), "--name", "x")
    assert broken.returncode == 2 and "is not an ONNX model" in broken.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        busy = _cli("--model", str(models["identity"]), "--name", "x", "--port", port)
        assert busy.returncode == 2 and "cannot listen" in busy.stderr
    assert "--max-batch-timeout-ms" in _cli("--help").stdout
