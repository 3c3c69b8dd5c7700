"""The assembled system for chaos scenarios, started once per module.

A 3-node ZooKeeper ensemble on loopback, ``autoai up`` on it, and two published models:

- ``a``: a tiny BERT, version 1 plain (2 instances) and version 2 blade-optimized (1 instance),
  published 90/10; the blade route falls back to version 1.
- ``b``: ``y = x + 1``, version 1 plain (2 instances), published 100.

The model repository is a 64 MiB tmpfs where the machine allows mounting one (root; CI), so
scenario 9 can fill it; elsewhere it is a plain directory and scenario 9 is skipped.

Each scenario gets a fresh SDK client (its own store session and metrics registry) and 32 threads
calling both models in turn (``load``); the fixture waits until every instance is back, ready and
discovered before handing the system over, so one scenario's damage never leaks into the next.
Every process is stopped by PID at teardown. Each scenario records its figures with
``figures(...)``: a JSON line in ``<basetemp>/chaos-figures.jsonl`` (copied to
docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from autoai.orchestrators import InstanceRecord, LocalOrchestrator
from autoai.sdk import ModelClient
from autoai.testing import free_port
from config_store import ConfigStore, open_store
from config_store.testing import ZooKeeperEnsemble
from config_store.testing.plugin import _require_zookeeper
from tests.fixtures import disks, onnx_models
from tests.fixtures.system import ControlPlane, Traffic, records, wait

SESSION_TIMEOUT = 4.0
ATTEMPT_TIMEOUT = 1.0
"""ZooKeeper session timeout of every process (control plane, instances, SDKs), seconds."""
CONCURRENCY = 32
BERT = {
    "input_ids": np.arange(1, 9, dtype=np.int64).reshape(1, 8),
    "attention_mask": np.ones((1, 8), np.int64),
}
PLUS_ONE = {"x": np.zeros((1, 4), np.float32)}
CALLS = (("a", BERT), ("b", PLUS_ONE))
BERT_SIZE: dict[str, Any] = {"hidden": 64, "layers": 2}
BLADE: dict[str, Any] = {"batch_sizes": [1, 4]}
INSTANCES = {("a", "1"): 2, ("a", "2"): 1, ("b", "1"): 2}
"""(model, version) -> instances every scenario starts with."""
REPO_DISK = 64 << 20
"""Bytes of the repository's tmpfs."""


@dataclass
class System:
    root: Path
    ensemble: ZooKeeperEnsemble
    url: str
    store: ConfigStore
    plane: ControlPlane
    orchestrator: LocalOrchestrator
    small_disk_refused: str | None = None
    """Why the repository is not on its own small tmpfs (None: it is, at ``root / "repo"``)."""
    services: dict[tuple[str, str], str] = field(default_factory=dict)

    def start_plane(self) -> ControlPlane:
        self.plane = ControlPlane(
            self.url, self.root, self.plane.port, env={"HOME": str(self.root / "home")}
        )
        return self.plane

    def records(self, model: str, version: str) -> list[InstanceRecord]:
        return records(self.store, version, model)

    def deployment(self, model: str, version: str) -> dict[str, Any]:
        doc: dict[str, Any] = self.plane.call(
            "GET", f"/api/v1/models/{model}/versions/{version}/deployment"
        )
        return doc

    def discovered(self, model: str, version: str) -> set[str]:
        """Instance ids registered in the store for that deployment's service."""
        return {i.id for i in self.store.instances(self.services[(model, version)])}

    def healthy(self) -> bool:
        for (model, version), n in INSTANCES.items():
            instances = self.deployment(model, version)["instances"]
            if len(instances) != n or not all(i["ready"] and i["alive"] for i in instances):
                return False
            if len(self.discovered(model, version)) != n:
                return False
        recorded = {r.pid for (m, v) in INSTANCES for r in self.records(m, v)}
        return set(self.orchestrator.processes()) == recorded

    def sdk(self, registry: CollectorRegistry) -> ModelClient:
        return ModelClient(
            self.url,
            registry=registry,
            snapshot_dir=str(self.root / "sdk-snapshot"),
            attempt_timeout=ATTEMPT_TIMEOUT,  # a hung instance costs one attempt (scenario 7)
        )


def _chroot_url(ensemble: ZooKeeperEnsemble) -> str:
    return f"zk://{ensemble.connect_string}/chaos"


def _env(root: Path) -> dict[str, str]:
    return {"HOME": str(root / "home"), "AUTOAI_CACHE": str(root / "cache")}


def _blade_wins(root: Path) -> tuple[Path, dict[str, Any]]:
    """A tiny BERT and blade options under which blade wins by a wide margin, every time.

    Test data like real sentences (4 to 12 tokens padded to 128) makes trim-padding several
    times faster than plain (4.6x here), so the blade route does not depend on a timing race;
    the deploy says ``required``, so a miss fails loudly.
    """
    model = onnx_models.tiny_bert(root / "a2", seed=1, **BERT_SIZE)
    rng = np.random.default_rng(0)
    ids = np.zeros((32, 128), np.int64)
    mask = np.zeros((32, 128), np.int64)
    for row in range(32):
        n = int(rng.integers(4, 13))
        ids[row, :n] = rng.integers(1, 100, n)
        mask[row, :n] = 1
    data = root / "sentences.npz"
    np.savez(data, input_ids=ids, attention_mask=mask)
    return model, {**BLADE, "test_data": str(data)}


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    _require_zookeeper()
    root = tmp_path_factory.mktemp("chaos")
    (root / "home").mkdir()
    # 500 ms ticks: the server expires a session within timeout + one tick.
    ensemble = ZooKeeperEnsemble(root / "zk", tick_ms=500)
    store: ConfigStore | None = None
    plane: ControlPlane | None = None
    orchestrator: LocalOrchestrator | None = None
    refused = disks.mount_error(root / "repo", REPO_DISK)
    try:
        ensemble.start()
        url = _chroot_url(ensemble)
        store_url = f"{url}?session_timeout={SESSION_TIMEOUT:g}"
        store = open_store(store_url, snapshot_dir=False)
        orchestrator = LocalOrchestrator(store, store_url, root / "run")
        bert, blade_options = _blade_wins(root)
        plane = ControlPlane(store_url, root, free_port(), env=_env(root))
        plane.wait(plane.leads, 30, "the control plane to lead")
        sys_ = System(root, ensemble, store_url, store, plane, orchestrator, refused)
        models = {
            "a": [onnx_models.tiny_bert(root / "a1", **BERT_SIZE), bert],
            "b": [onnx_models.tagged(root / "b1", 1.0)],
        }
        for name, paths in models.items():
            for path in paths:
                body = {"name": name, "uri": f"file://{path}"}
                plane.call("POST", "/api/v1/models", 201, json=body)
        plane.deploy("1", {"metadata": {"instance": 2}}, model="a")
        plane.deploy("2", {"blade": {"required": True, **blade_options}}, model="a")
        plane.deploy("1", {"metadata": {"instance": 2}}, model="b")
        routes = [{"version": "1", "weight": 90}, {"version": "2", "weight": 10}]
        plane.call("POST", "/api/v1/models/a/publish", json={"routes": routes})
        plane.call(
            "POST", "/api/v1/models/b/publish", json={"routes": [{"version": "1", "weight": 100}]}
        )
        for model, version in INSTANCES:
            sys_.services[(model, version)] = sys_.deployment(model, version)["service"]
        yield sys_
        plane = sys_.plane
    finally:
        if plane is not None and plane.proc.poll() is None:
            plane.kill()
        if orchestrator is not None:
            for pid in orchestrator.processes():
                os.kill(pid, signal.SIGKILL)
        if store is not None:
            store.close()
        ensemble.stop(kill=True)
        if refused is None:
            disks.unmount(root / "repo")


@dataclass
class Chaos:
    """What a scenario works with: the system, its SDK and the load on it."""

    system: System
    sdk: ModelClient
    load: Traffic
    registry: CollectorRegistry

    def fallbacks(self, reason: str = "blade_unavailable") -> float:
        total = 0.0
        for metric in self.registry.collect():
            for sample in metric.samples:
                if (
                    sample.name == "autoai_client_fallbacks_total"
                    and sample.labels.get("reason") == reason
                ):
                    total += sample.value
        return total


@pytest.fixture
def chaos(system: System) -> Iterator[Chaos]:
    """The system back to its starting shape, a fresh SDK and 32 callers on both models."""
    for server in system.ensemble:
        server.start(wait=False)
    for server in system.ensemble:
        server.wait_ready()
    if system.plane.proc.poll() is not None:
        system.start_plane()
    system.plane.wait(system.plane.leads, 30, "the control plane to lead")
    wait(system.healthy, 40, "every instance to be ready and discovered", step=0.3)
    registry = CollectorRegistry()
    sdk = system.sdk(registry)
    load: Traffic | None = None
    try:
        for model, inputs in CALLS:
            sdk.predict(model, inputs)
        load = Traffic(sdk, threads=CONCURRENCY, calls=CALLS, pause=0.01)
        wait(lambda: load is not None and load.sent > 200, 20, "steady load")
        yield Chaos(system, sdk, load, registry)
    finally:
        if load is not None:
            load.stop()
        sdk.close()


@pytest.fixture(scope="session")
def figures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """``figures(scenario, **numbers)``: print and keep one scenario's figures."""
    path = tmp_path_factory.getbasetemp() / "chaos-figures.jsonl"

    def record(scenario: str, **numbers: Any) -> None:
        line = json.dumps({"scenario": scenario, "at": time.time(), **numbers})
        print(f"\nCHAOS {line}")
        with path.open("a") as out:
            out.write(line + "\n")

    yield record
