"""deploy/k8s: every manifest validates for both Kubernetes versions, the Role grants exactly the
verbs the orchestrator's calls need, and the pieces refer to each other consistently."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from autoai.kubernetes import KubernetesSettings, _orchestrator, render

from ._cases import CASES, VERSIONS

DEPLOY = Path(__file__).parents[3] / "deploy" / "k8s"
NOT_KUBERNETES_OBJECTS = {"kustomization.yaml"}  # kustomize's own file


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name not in NOT_KUBERNETES_OBJECTS:
            found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def _kind(kind: str, name: str | None = None) -> dict[str, Any]:
    (obj,) = [
        o for _, o in _manifests() if o["kind"] == kind and name in (None, o["metadata"]["name"])
    ]
    return obj


def _pod_templates() -> list[tuple[str, dict[str, Any]]]:
    templates = [
        (f"{f}:{o['metadata']['name']}", o["spec"]["template"])
        for f, o in _manifests()
        if o["kind"] in ("Deployment", "StatefulSet")
    ]
    for case, make in CASES.items():  # the model servers the orchestrator renders
        templates.append((f"rendered {case}", render(**make())[0]["spec"]["template"]))
    return templates


def test_the_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(
        p.name for p in DEPLOY.glob("*.yaml") if p.name not in NOT_KUBERNETES_OBJECTS
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_validates(version: str) -> None:
    manifests = _manifests()
    assert {o["kind"] for _, o in manifests} >= {
        "Namespace", "ServiceAccount", "Role", "RoleBinding", "Deployment", "Service",
        "StatefulSet", "Secret", "PersistentVolumeClaim", "PodDisruptionBudget",
    }  # fmt: skip
    for name, obj in manifests:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name} {obj['kind']}/{obj['metadata']['name']}: {exc}")


def test_everything_lives_in_one_namespace() -> None:
    namespace = _kind("Namespace")["metadata"]["name"]
    for name, obj in _manifests():
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == namespace, name


_RESOURCE = {
    "deployment": ("apps", "deployments"),
    "config_map": ("", "configmaps"),
    "service": ("", "services"),
    "secret": ("", "secrets"),
    "pod": ("", "pods"),
    "pod_log": ("", "pods/log"),
    "event": ("", "events"),
}
_VERB = {"read": "get", "list": "list", "patch": "patch", "delete": "delete", "create": "create"}


def _verbs_the_orchestrator_needs() -> set[tuple[str, str, str]]:
    source = Path(_orchestrator.__file__).read_text()
    calls = set(re.findall(r"self\.(?:apps|core)\.(\w+)", source))
    calls |= {f"patch_namespaced_{suffix}" for _, suffix in _orchestrator._KINDS.values()}
    assert "patch_namespaced_deployment" in calls and "list_namespaced_pod" in calls
    needed = set()
    for call in calls:
        action, _, resource = call.partition("_namespaced_")
        group, plural = _RESOURCE[resource]
        needed.add((group, plural, _VERB[action]))
        if action == "patch" and resource in ("deployment", "config_map", "service", "secret"):
            needed.add((group, plural, "create"))  # server-side apply creates what is missing
    return needed


def test_the_role_grants_exactly_what_the_orchestrator_calls() -> None:
    granted = {
        (group, resource, verb)
        for rule in _kind("Role")["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == _verbs_the_orchestrator_needs()
    assert not any(o["kind"].startswith("Cluster") for _, o in _manifests())


def test_the_control_plane_runs_the_kubernetes_orchestrator_as_the_bound_account() -> None:
    deployment = _kind("Deployment", "autoai-control")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[args.index("--orchestrator") + 1] == "kubernetes"
    (subject,) = _kind("RoleBinding")["subjects"]
    assert (
        pod["serviceAccountName"] == subject["name"] == _kind("ServiceAccount")["metadata"]["name"]
    )
    assert _kind("RoleBinding")["roleRef"]["name"] == _kind("Role")["metadata"]["name"]
    service = _kind("Service", "autoai-control")
    assert service["spec"]["selector"].items() <= pod_labels(deployment).items()


def pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    return dict(obj["spec"]["template"]["metadata"]["labels"])


def test_the_control_planes_settings_exist_and_name_shipped_objects() -> None:
    (container,) = _kind("Deployment", "autoai-control")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    fields = {
        name.removeprefix("AUTOAI_KUBERNETES__").lower(): e.get("value")
        for name, e in env.items()
        if name.startswith("AUTOAI_KUBERNETES__")
    }
    assert set(fields) <= set(KubernetesSettings.model_fields)
    assert fields["store_secret"] == _kind("Secret", "autoai-store")["metadata"]["name"]
    assert fields["repository_claim"] == _kind("PersistentVolumeClaim")["metadata"]["name"]
    assert env["AUTOAI_STORE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "autoai-store",
        "key": KubernetesSettings().store_secret_key,
    }
    repo = env["AUTOAI_REPO_DIR"]["value"]
    assert {"name": "repository", "mountPath": repo} in container["volumeMounts"]
    store_url = _kind("Secret", "autoai-store")["stringData"]["url"]
    zk = _kind("StatefulSet", "zk")
    hosts = [f"zk-{i}.zk-hs.autoai.svc:2181" for i in range(zk["spec"]["replicas"])]
    assert store_url == f"zk://{','.join(hosts)}/autoai"


@pytest.mark.parametrize("where", [w for w, _ in _pod_templates()])
def test_pods_are_scraped_and_meet_the_restricted_pod_security_standard(where: str) -> None:
    (template,) = [t for w, t in _pod_templates() if w == where]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) > 0
    pod = template["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"]:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        assert "privileged" not in security
        assert "memory" in container["resources"]["limits"]
