"""How the orchestrator is chosen and wired, and how it fails without a reachable API server.

No API server here: the client is pointed at a port where nothing listens (a real refusal), which
is also what a control plane cut off from its cluster sees."""

from __future__ import annotations

import json
import socket
import types
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
from typer.testing import CliRunner

import autoai.kubernetes
from autoai.api import ControlSettings
from autoai.api.dependencies import Services
from autoai.cli import app as cli
from autoai.errors import InvalidRequest
from autoai.kubernetes import KubernetesError, KubernetesOrchestrator, Sweeper, known_services
from autoai.orchestrators import StartFailed
from autoai.schema import DeploymentRecord, KubernetesObjects, Placement, PodHealth
from config_store import ConfigStore, open_store

from ._cases import SETTINGS, cpu_case


def test_all_public_names_are_in_dunder_all() -> None:
    module = autoai.kubernetes
    public = {
        n
        for n, v in vars(module).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType)
    }
    assert public == set(module.__all__)


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOAI_ORCHESTRATOR", "kubernetes")
    monkeypatch.setenv("AUTOAI_KUBERNETES__NAMESPACE", "serving")
    monkeypatch.setenv("AUTOAI_KUBERNETES__NODE_SELECTOR", '{"pool": "gpu"}')
    settings = ControlSettings()
    assert settings.orchestrator == "kubernetes"
    assert settings.kubernetes.namespace == "serving"
    assert settings.kubernetes.node_selector == {"pool": "gpu"}
    assert ControlSettings(orchestrator="local").kubernetes.image == SETTINGS.image
    with pytest.raises(ValueError):
        ControlSettings(orchestrator="nomad")


def test_up_refuses_an_unknown_orchestrator(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["up", "--orchestrator", "nomad", "--store", f"sqlite:///{tmp_path}/s.db"]
    )
    assert result.exit_code == 2
    assert "orchestrator" in result.output


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port bound but never listening: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ConfigStore]:
    with open_store(f"sqlite:///{tmp_path / 'store.db'}", snapshot_dir=False) as opened:
        yield opened


def _kubeconfig(path: Path, port: int) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "ctx",
            }
        )
    )
    return path


@pytest.fixture
def orchestrator(store: ConfigStore, refused_port: int) -> KubernetesOrchestrator:
    configuration = kubernetes.client.Configuration(host=f"http://127.0.0.1:{refused_port}")
    configuration.retries = 0
    client = kubernetes.client.ApiClient(configuration)
    return KubernetesOrchestrator(store, SETTINGS, "/var/lib/autoai/repo", client=client, poll=0.01)


def test_services_build_the_kubernetes_orchestrator(
    tmp_path: Path, store: ConfigStore, refused_port: int
) -> None:
    settings = ControlSettings(
        store_url=f"sqlite:///{tmp_path / 'store.db'}",
        repo_dir=tmp_path / "repo",
        run_dir=tmp_path / "run",
        orchestrator="kubernetes",
        kubernetes={"kubeconfig": str(_kubeconfig(tmp_path / "kubeconfig", refused_port))},
    )
    svc = Services(settings, store)
    try:
        assert svc.orchestrator.kind == "kubernetes"
        assert svc.sweeper is not None
        assert svc.deployments.orchestrator is svc.orchestrator
        assert svc.reconciler.orchestrator is svc.local  # processes of this host only
    finally:
        svc.close()
    local = Services(settings.model_copy(update={"orchestrator": "local"}), store)
    try:
        assert local.orchestrator is local.local and local.sweeper is None
    finally:
        local.close()


def test_no_configuration_is_one_clear_error(tmp_path: Path, store: ConfigStore) -> None:
    settings = SETTINGS.model_copy(update={"kubeconfig": str(tmp_path / "missing")})
    with pytest.raises(KubernetesError, match="no usable Kubernetes configuration"):
        KubernetesOrchestrator(store, settings, tmp_path)


def test_an_unreachable_api_server(orchestrator: KubernetesOrchestrator) -> None:
    case = cpu_case()
    with pytest.raises(
        StartFailed, match="Kubernetes API: read Deployment autoai/eas-intent-cls-1"
    ):
        orchestrator.launch(case["service"], case["service_json"], case["spec"], 2)
    with pytest.raises(KubernetesError) as caught:
        orchestrator.reconcile(set)
    assert caught.value.detail == {"status": 0}
    names = KubernetesObjects(
        namespace="autoai",
        deployment="eas-intent-cls-1",
        service="eas-intent-cls-1",
        configmap="eas-intent-cls-1",
    )
    with pytest.raises(KubernetesError):
        orchestrator.teardown("intent-cls-1", Placement(kubernetes=names))
    orchestrator.abandon("intent-cls-1", Placement())  # logged, left to the sweep


def test_a_model_outside_the_repository_fails_before_any_call(
    orchestrator: KubernetesOrchestrator,
) -> None:
    case = cpu_case()
    service_json = {**case["service_json"], "model_path": "/home/me/model.onnx"}
    with pytest.raises(InvalidRequest, match="not under the repository"):
        orchestrator.launch(case["service"], service_json, case["spec"], 1)


def test_health_falls_back_to_the_registrations(
    orchestrator: KubernetesOrchestrator, store: ConfigStore
) -> None:
    with store.register("intent-cls-1", "10.1.2.3", 8000, {"model": "intent-cls"}):
        (row,) = orchestrator.health("intent-cls-1", Placement(), store.instances("intent-cls-1"))
    assert isinstance(row, PodHealth)
    assert row.ip == "10.1.2.3" and row.ready is True
    assert row.error is not None and "Kubernetes API" in row.error


def test_a_sweep_that_cannot_list_deletes_nothing(orchestrator: KubernetesOrchestrator) -> None:
    asked: list[int] = []

    def known() -> set[str]:
        asked.append(1)
        return set()

    sweeper = Sweeper(orchestrator, known, is_leader=lambda: True, tick=0.01)
    with pytest.raises(KubernetesError):
        sweeper.sweep()
    assert asked == []  # the store is read only after the listing
    sweeper.start()  # the loop survives the refusals
    sweeper.close()
    assert sweeper.sweeps == 0


def _marker(store: ConfigStore, name: str, version: str, replica: str) -> None:
    body = json.dumps({"replica": replica, "operation": "deploy"}).encode()
    store.publish(f"operation.{name}.{version}", body, group="control")


def test_known_services(store: ConfigStore) -> None:
    record = DeploymentRecord(
        name="a", version="1", service="a-1", processor="onnx", model_sha256="0" * 64, created=0.0
    )
    store.publish("deployment.a.1", record.model_dump_json().encode(), group="control")
    _marker(store, "b", "2", "live")  # a deploy running on a live replica
    _marker(store, "c", "3", "dead")  # its replica is gone: its objects are orphans
    _marker(store, "d-e", "12", "live")
    assert known_services(store, {"live"}) == {"a-1", "b-2", "d-e-12"}
