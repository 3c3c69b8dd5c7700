"""Real eas-server processes serving ``tagged`` models (y = x + tag) as versions of one model,
registered in a real store, and helpers to publish route tables for them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from config_store import ConfigStore, open_store
from config_store.testing import ZooKeeperServer
from tests.fixtures import onnx_models
from tests.fixtures.servers import ServerProcess
from tests.fixtures.waiting import wait

MODEL = "tagger"
SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, -1]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, -1]}],
}


def route_table(
    routes: Sequence[Mapping[str, Any]],
    *,
    model: str = MODEL,
    sticky_key: str | None = None,
    shadow: Mapping[str, Any] | None = None,
) -> bytes:
    """A route-table document for ``routes`` (each ``{version, weight}``; service and processor
    default to ``tagger-{version}`` / ``onnx``)."""
    entries = [
        {"service": f"{model}-{r['version']}", "processor": "onnx", **dict(r)} for r in routes
    ]
    doc = {
        "schema_version": 1,
        "model": model,
        "revision": 0,
        "routes": entries,
        "sticky_key": sticky_key,
        "shadow": dict(shadow) if shadow else None,
        "signature": SIGNATURE,
    }
    return json.dumps(doc).encode()


def x(rows: int = 2, n: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((rows, n)).astype(np.float32)}


def tag_of(inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> int:
    """Which version answered: the tag the model added."""
    return round(float(np.mean(outputs["y"] - inputs["x"])))


def wait_for(predicate: Any, timeout: float = 20.0, what: str = "condition") -> None:
    """``tests.fixtures.waiting.wait`` with this package's defaults."""
    wait(predicate, timeout, what, step=0.02)


@dataclass
class Fleet:
    """Servers of the versions of ``tagger`` registered in one store."""

    url: str
    models_dir: Path
    store: ConfigStore
    servers: dict[str, list[ServerProcess]] = field(default_factory=dict)

    def serve(self, version: str, tag: float | None = None, *args: str) -> ServerProcess:
        model = onnx_models.tagged(self.models_dir, float(version) if tag is None else tag)
        server = ServerProcess(
            [
                "--model",
                str(model),
                "--name",
                MODEL,
                "--version",
                version,
                "--port",
                "0",
                "--store",
                self.url,
                "--max-batch-timeout-ms",
                "1",
                *args,
            ],
            env={"HOME": str(self.models_dir.parent)},
        )
        self.servers.setdefault(version, []).append(server)
        return server

    def wait_registered(self, service: str, count: int = 1) -> None:
        wait_for(
            lambda: len(self.store.instances(service)) >= count,
            what=f"{count} instance(s) of {service}",
        )

    def publish(self, content: bytes) -> int:
        return self.store.publish(MODEL, content, group="models")

    def stop(self) -> None:
        for servers in self.servers.values():
            for server in servers:
                server.stop()


def _fleet(url: str, tmp: Path, versions: Sequence[str]) -> Iterator[Fleet]:
    store = open_store(url, snapshot_dir=tmp / "fleet-snapshot")
    fleet = Fleet(url, tmp / "models", store)
    try:
        for version in versions:
            fleet.serve(version)
        for version in versions:
            fleet.wait_registered(f"{MODEL}-{version}")
        yield fleet
    finally:
        fleet.stop()
        store.close()


@pytest.fixture(scope="module")
def zk_fleet(
    zk_server: ZooKeeperServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    """Versions 1, 2 and 3 of ``tagger`` on the session's ZooKeeper, in a chroot of the module."""
    url = f"zk://{zk_server.address}/m{uuid.uuid4().hex[:10]}"
    yield from _fleet(url, tmp_path_factory.mktemp("zkfleet"), ["1", "2", "3"])


@pytest.fixture(scope="module")
def sqlite_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Versions 1 and 2 of ``tagger`` on an embedded store."""
    tmp = tmp_path_factory.mktemp("sqlfleet")
    yield from _fleet(f"sqlite:///{tmp / 'store.db'}", tmp, ["1", "2"])
