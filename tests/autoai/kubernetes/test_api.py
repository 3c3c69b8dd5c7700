"""The orchestrator against a real API server (marker ``k8s``; skipped unless ``KUBECONFIG``
reaches one, see conftest.py). Not run where this was written: no cluster was reachable.

The full lifecycle also needs an eas-server image, a store that both this test and the pods reach,
and a claim holding a model: ``AUTOAI_TEST_K8S_IMAGE``, ``AUTOAI_TEST_K8S_STORE_URL``,
``AUTOAI_TEST_K8S_CLAIM``, ``AUTOAI_TEST_K8S_REPO`` (where the claim is mounted) and
``AUTOAI_TEST_K8S_MODEL`` (an .onnx path under it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autoai.kubernetes import KubernetesOrchestrator, KubernetesSettings, render
from autoai.orchestrators import StartFailed
from autoai.schema import DeploySpec, PodSlot
from config_store import ConfigStore, open_store

from ._cases import CASES, OWNER_UID, REPO, cpu_case

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(600)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ConfigStore]:
    url = os.environ.get("AUTOAI_TEST_K8S_STORE_URL") or f"sqlite:///{tmp_path / 'store.db'}"
    with open_store(url, snapshot_dir=False) as opened:
        yield opened


def _prepare(api_client: Any, namespace: str, store_url: str, claim: str) -> None:
    """The Secret and claim every model server pod refers to."""
    import kubernetes

    core = kubernetes.client.CoreV1Api(api_client)
    for apply, name, body in (
        (core.patch_namespaced_secret, "autoai-store",
         {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "autoai-store"},
          "stringData": {"url": store_url}}),
        (core.patch_namespaced_persistent_volume_claim, claim,
         {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
          "spec": {"accessModes": ["ReadWriteOnce"],
                   "resources": {"requests": {"storage": "16Mi"}}}}),
    ):  # fmt: skip
        apply(name, namespace, body, field_manager="autoai-test", force=True,
              _content_type="application/apply-patch+yaml")  # fmt: skip


def _settings(namespace: str, **changes: Any) -> KubernetesSettings:
    return KubernetesSettings(namespace=namespace, start_timeout=180, **changes)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_api_server_accepts_every_rendered_object(
    api_client: Any, namespace: str, case: str
) -> None:
    import kubernetes

    apps = kubernetes.client.AppsV1Api(api_client)
    core = kubernetes.client.CoreV1Api(api_client)
    args = {**CASES[case](), "settings": _settings(namespace)}
    for obj in render(**args, owner_uid=OWNER_UID):
        api, kind = (apps, "deployment") if obj["kind"] == "Deployment" else (core, "")
        kind = (
            kind
            or {"ConfigMap": "config_map", "Service": "service", "Secret": "secret"}[obj["kind"]]
        )
        getattr(api, f"patch_namespaced_{kind}")(
            obj["metadata"]["name"], namespace, obj, dry_run="All", field_manager="autoai",
            force=True, _content_type="application/apply-patch+yaml",
        )  # fmt: skip


def test_a_launch_that_cannot_pull_fails_and_leaves_nothing(
    api_client: Any, namespace: str, store: ConfigStore
) -> None:
    _prepare(api_client, namespace, "sqlite:////tmp/unused.db", "autoai-models")
    settings = _settings(namespace, image="registry.invalid/autoai/none:0")
    orchestrator = KubernetesOrchestrator(store, settings, REPO, client=api_client)
    case = cpu_case()
    with pytest.raises(StartFailed) as failed:
        orchestrator.launch(case["service"], case["service_json"], case["spec"], 1)
    assert "ImagePullBackOff" in str(failed.value) or "InvalidImageName" in str(failed.value)
    assert failed.value.detail["events"], "the events say why"
    deadline = time.monotonic() + 60
    while orchestrator.pods(case["service"]) and time.monotonic() < deadline:
        time.sleep(1)
    assert orchestrator.pods(case["service"]) == []
    assert orchestrator.reconcile(set) == []  # the Deployment is gone already


def test_reconcile_deletes_deployments_without_a_record(
    api_client: Any, namespace: str, store: ConfigStore
) -> None:
    orchestrator = KubernetesOrchestrator(store, _settings(namespace), REPO, client=api_client)
    for make in CASES.values():
        deployment = render(**{**make(), "settings": orchestrator.settings})[0]
        deployment["spec"]["replicas"] = 0
        orchestrator.apply(deployment)
    kept = "intent-cls-1"
    assert orchestrator.reconcile(lambda: {kept}) == ["eas-bert-base-3"]
    assert orchestrator.reconcile(lambda: {kept}) == []
    assert orchestrator.reconcile(set) == ["eas-intent-cls-1"]


_LIFECYCLE = ("AUTOAI_TEST_K8S_IMAGE", "AUTOAI_TEST_K8S_STORE_URL", "AUTOAI_TEST_K8S_CLAIM",
              "AUTOAI_TEST_K8S_REPO", "AUTOAI_TEST_K8S_MODEL")  # fmt: skip


@pytest.mark.skipif(
    not all(os.environ.get(v) for v in _LIFECYCLE),
    reason=f"the full lifecycle needs {', '.join(_LIFECYCLE)}",
)
def test_launch_scale_health_teardown(api_client: Any, namespace: str, store: ConfigStore) -> None:
    env = {v: os.environ[v] for v in _LIFECYCLE}
    _prepare(api_client, namespace, env["AUTOAI_TEST_K8S_STORE_URL"], env["AUTOAI_TEST_K8S_CLAIM"])
    settings = _settings(
        namespace, image=env["AUTOAI_TEST_K8S_IMAGE"], repository_claim=env["AUTOAI_TEST_K8S_CLAIM"]
    )
    orchestrator = KubernetesOrchestrator(
        store, settings, env["AUTOAI_TEST_K8S_REPO"], client=api_client
    )
    service = "k8s-test-1"
    service_json = {"name": "k8s-test", "version": "1", "processor": "onnx",
                    "model_path": env["AUTOAI_TEST_K8S_MODEL"], "metadata": {}}  # fmt: skip
    spec = DeploySpec.model_validate({"metadata": {"instance": 1}})
    placement = orchestrator.launch(service, service_json, spec, 1)
    try:
        assert [isinstance(i, PodSlot) and i.pod is not None for i in placement.instances] == [True]
        assert [
            r.ready for r in orchestrator.health(service, placement, store.instances(service))
        ] == [True]
        bigger, finish = orchestrator.resize(service, placement, 2)
        finish()
        assert len(store.instances(service)) == 2
        _, finish = orchestrator.resize(service, bigger, 1)
        assert len(store.instances(service)) == 2  # removed pods serve until finish()
        finish()
        assert len(store.instances(service)) == 1
    finally:
        orchestrator.teardown(service, placement)
    assert store.instances(service) == []
