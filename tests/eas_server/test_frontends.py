"""Several front end processes behind one address (``--frontends``): one instance to clients and
to the store, batches across front ends, a whole /metrics and /stats, SIGTERM drains every part,
and a crash of any part takes the instance down whole, with no call left hanging."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from config_store import open_store
from eas_client import encode_request

from .conftest import ServerProcess, StartServer, wait_until

N_CLIENTS = 16


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _body() -> tuple[bytes, dict[str, str]]:
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    body, length = encode_request({"x": x}, binary_outputs=False)
    return body, {"Inference-Header-Content-Length": str(length)}


class Load:
    """``N_CLIENTS`` threads, each on its own keep-alive connection, calling until stopped;
    every call's outcome is kept, and a call that takes longer than 20 s counts as hung."""

    def __init__(self, url: str):
        self.url = f"{url}/v2/models/m/infer"
        self.ok = 0
        self.failed: list[str] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client) for _ in range(N_CLIENTS)]

    def _client(self) -> None:
        body, headers = _body()
        while not self.stop.is_set():
            with httpx.Client(timeout=20) as http:
                while not self.stop.is_set():
                    try:
                        r = http.post(self.url, content=body, headers=headers)
                    except httpx.TimeoutException as exc:
                        with self._lock:
                            self.failed.append(f"hung: {exc!r}")
                        break
                    except httpx.HTTPError as exc:  # the instance went away: reconnect
                        with self._lock:
                            self.failed.append(repr(exc))
                        break
                    with self._lock:
                        if r.status_code == 200:
                            self.ok += 1
                        else:
                            self.failed.append(f"{r.status_code} {r.text}")
            if not self.stop.is_set():
                time.sleep(0.01)  # nothing listens any more: do not spin

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in self._threads), "a client call hung"

    @property
    def hung(self) -> list[str]:
        return [f for f in self.failed if f.startswith("hung")]


@pytest.fixture
def instance(
    start_server: StartServer, models: dict[str, Path], tmp_path: Path
) -> Iterator[tuple[ServerProcess, str]]:
    url = f"sqlite://{tmp_path / 'store.db'}"
    server = start_server(models["identity"], "--frontends", "2", "--store", url, "--service", "s")
    wait_until(lambda: len(children(server.proc.pid)) == 2)
    yield server, url
    for pid in children(server.proc.pid):
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def _stats(url: str) -> tuple[int, int]:
    doc = httpx.get(f"{url}/v2/models/m/stats").json()["model_stats"][0]
    return doc["inference_count"], doc["execution_count"]


def test_one_instance_batches_across_front_ends_and_counts_all_of_them(
    instance: tuple[ServerProcess, str],
) -> None:
    server, store_url = instance
    with open_store(store_url, snapshot_dir=False, failover_dir=False) as store:
        wait_until(lambda: len(store.instances("s")) == 1)
        (inst,) = store.instances("s")
        assert inst.address == server.address and inst.payload["pid"] == server.proc.pid
    with Load(server.url) as load:
        wait_until(lambda: load.ok >= 400, timeout=60)
    assert load.failed == []
    inferences, executions = _stats(server.url)
    assert inferences == load.ok
    assert executions < inferences  # 16 clients over two front ends shared batches
    metrics = httpx.get(f"{server.url}/metrics").text
    line = next(ln for ln in metrics.splitlines() if ln.startswith("eas_requests_total{"))
    assert 'outcome="success"' in line and float(line.rsplit(" ", 1)[1]) == load.ok
    counts = [
        ln for ln in metrics.splitlines() if ln.startswith("eas_request_duration_seconds_count")
    ]
    assert float(counts[0].rsplit(" ", 1)[1]) == load.ok
    # a bad request is checked by the front end and counted by the instance too
    r = httpx.post(f"{server.url}/v2/models/m/infer", json={"inputs": [{"name": "q"}]})
    assert r.status_code == 400 and "error" in r.json()
    wait_until(lambda: _count(server.url, 'outcome="bad_request"') == 1.0)


def _count(url: str, label: str) -> float:
    """eas_requests_total for the outcome ``label`` (front ends report finished requests to
    the executor at the end of their event-loop turn: a moment after the answer)."""
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("eas_requests_total{") and label in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_sigterm_drains_every_part(instance: tuple[ServerProcess, str]) -> None:
    server, store_url = instance
    pids = children(server.proc.pid)
    with open_store(store_url, snapshot_dir=False, failover_dir=False) as store:
        wait_until(lambda: len(store.instances("s")) == 1)
        with Load(server.url) as load:
            wait_until(lambda: load.ok >= 50, timeout=60)
            server.terminate()
            wait_until(lambda: store.instances("s") == [], timeout=10)
            load.stop.set()  # clients that route by the store have moved away
            assert server.proc.wait(timeout=40) == 0
        assert store.instances("s") == []
    assert not any(alive(p) for p in pids)
    assert load.hung == []
    # in flight when SIGTERM came: answered (clients that called after the exit got refused)
    assert not [f for f in load.failed if f.startswith(("5", "4"))]


@pytest.mark.parametrize("victim", ["front end", "executor"])
def test_a_crashed_part_takes_the_instance_out_of_the_store(
    instance: tuple[ServerProcess, str], victim: str
) -> None:
    server, store_url = instance
    front_ends = children(server.proc.pid)
    with open_store(store_url, snapshot_dir=False, failover_dir=False) as store:
        wait_until(lambda: len(store.instances("s")) == 1)
        with Load(server.url) as load:
            wait_until(lambda: load.ok >= 50, timeout=60)
            os.kill(front_ends[0] if victim == "front end" else server.proc.pid, signal.SIGKILL)
            # no half-alive instance: every process ends, the store forgets the instance
            wait_until(lambda: not any(alive(p) for p in [server.proc.pid, *front_ends]), 20)
            wait_until(lambda: store.instances("s") == [], timeout=30)
        assert load.hung == []
    assert server.proc.wait(timeout=5) == (1 if victim == "front end" else -signal.SIGKILL)
