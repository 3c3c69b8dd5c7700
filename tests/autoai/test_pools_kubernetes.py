"""A pool on Kubernetes: its objects as rendered (pure, validated against the API's schemas),
the sweep that keeps them, and the token a pool there cannot have."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import kubernetes
import kubernetes_validate
import pytest

from autoai.errors import InvalidRequest
from autoai.kubernetes import KubernetesOrchestrator, known_services, render
from autoai.kubernetes._render import POOL_REPOSITORY
from autoai.operations import Operations, pool_key
from autoai.pools import PoolService
from autoai.schema import DeploySpec, PoolRecord
from config_store import open_store
from tests.autoai.kubernetes._cases import REPO, SETTINGS, VERSIONS


def _pool(**changes: Any) -> dict[str, Any]:
    case: dict[str, Any] = {
        "name": "shared",
        "version": "",
        "service": "pool-shared",
        "processor": "repository",
        "service_json": {"name": "pool-shared", "model_repository": POOL_REPOSITORY},
        "spec": DeploySpec.model_validate(
            {"metadata": {"pool": "shared", "instance": 3, "cpu": 4, "memory": "8Gi"}}
        ),
        "settings": SETTINGS,
        "repo_dir": REPO,
        "pool": True,
    }
    return {**case, **changes}


def test_a_pool_renders_as_a_deployment_of_repository_servers() -> None:
    objects = render(**_pool(), owner_uid="uid-1")
    assert [o["kind"] for o in objects] == ["Deployment", "ConfigMap", "Service"]
    deployment = objects[0]
    assert deployment["metadata"]["name"] == "eas-pool-shared"
    assert deployment["spec"]["replicas"] == 3
    labels = deployment["metadata"]["labels"]
    assert labels["autoai.io/pool"] == "shared" and labels["autoai.io/service"] == "pool-shared"
    assert "autoai.io/model" not in labels
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["EAS_SERVICE"] == "pool-shared" and env["EAS_INSECURE"] == "true"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[REPO]["readOnly"] is True  # versions are loaded by their paths there
    assert "readOnly" not in mounts[POOL_REPOSITORY]  # the server's own, empty, repository
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["pool-repository"] == {"name": "pool-repository", "emptyDir": {}}
    assert container["resources"]["limits"] == {"cpu": "4", "memory": "8Gi"}
    assert '"model_repository": "/var/lib/eas-server/models"' in objects[1]["data"]["service.json"]
    for version in VERSIONS:
        for obj in objects:
            kubernetes_validate.validate(obj, version, strict=True)


def test_a_pool_repository_elsewhere_is_refused() -> None:
    json = {"name": "pool-shared", "model_repository": "/tmp/models"}
    with pytest.raises(InvalidRequest, match="model_repository must be"):
        render(**_pool(service_json=json))


def test_the_sweep_keeps_a_pools_deployment(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'store.db'}"
    with open_store(url, snapshot_dir=False) as store:
        record = PoolRecord(name="shared", service="pool-shared", size=2, created=0.0)
        store.publish(pool_key("shared"), record.model_dump_json().encode(), group="control")
        Operations(store, "r1").begin("pool", "busy", "deploy m 1")
        assert known_services(store, {"r1"}) == {"pool-shared", "pool-busy"}
        assert known_services(store, set()) == {"pool-shared"}


def test_a_pool_on_kubernetes_takes_no_token(tmp_path: Path) -> None:
    """Refused before anything is applied: the orchestrator's API server here refuses every
    connection, and is never called."""
    with (
        socket.socket() as refused,
        open_store(f"sqlite://{tmp_path / 'store.db'}", snapshot_dir=False) as store,
    ):
        refused.bind(("127.0.0.1", 0))
        configuration = kubernetes.client.Configuration(
            host=f"http://127.0.0.1:{refused.getsockname()[1]}"
        )
        configuration.retries = 0
        orchestrator = KubernetesOrchestrator(
            store, SETTINGS, REPO, client=kubernetes.client.ApiClient(configuration), poll=0.01
        )
        pools = PoolService(store, orchestrator, Operations(store, "r1"))
        spec = DeploySpec.model_validate({"metadata": {"pool": "shared"}})
        with pytest.raises(InvalidRequest, match="runs without a token"):
            pools.ensure(spec, "secret", "m/1")
        assert pools.record("shared") is None
        assert (
            orchestrator.service_token(
                "pool-shared",
                PoolRecord(name="shared", service="pool-shared", size=1, created=0.0).placement,
            )
            is None
        )
        pools.close()
