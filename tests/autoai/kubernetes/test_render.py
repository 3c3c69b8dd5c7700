"""Rendering is pure: golden files, OpenAPI validation for two Kubernetes versions, properties.

Golden files are rewritten only with ``AUTOAI_UPDATE_GOLDEN=1`` (then review the diff).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from hypothesis import given, settings as hypothesis_settings, strategies as st
from pydantic import ValidationError

from autoai.errors import InvalidRequest
from autoai.kubernetes import KubernetesSettings, label_value, object_name, render
from autoai.schema import DeploySpec
from eas_server._settings import ServerSettings, load_service_json

from ._cases import CASES, OWNER_UID, REPO, SETTINGS, VERSIONS, cpu_case

GOLDEN = Path(__file__).parent / "golden"
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


# Multi-line strings (the service JSON) as literal blocks, so golden diffs read well.
_Dumper: Any = type("_Dumper", (yaml.SafeDumper,), {})


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def _by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in objects}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    objects = render(**CASES[case](), owner_uid=OWNER_UID)
    text = yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, width=100)
    assert list(yaml.safe_load_all(text)) == objects
    path = GOLDEN / f"{case}.yaml"
    if os.environ.get("AUTOAI_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.is_file(), f"{path} is missing: run with AUTOAI_UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(), f"{path} differs (AUTOAI_UPDATE_GOLDEN=1 rewrites it)"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("owner", [None, OWNER_UID])
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_object_validates(case: str, owner: str | None, version: str) -> None:
    objects = render(**CASES[case](), owner_uid=owner)
    assert [o["kind"] for o in objects][:3] == ["Deployment", "ConfigMap", "Service"]
    for obj in objects:
        assert kubernetes_validate.validate(obj, version, strict=True) == version[:4]


@pytest.mark.parametrize("version", VERSIONS)
def test_the_validator_rejects_a_broken_object(version: str) -> None:
    """The validation above is not vacuous: a misspelt field or a wrong type fails."""
    deployment = render(**cpu_case())[0]
    misspelt = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    wrong_type = {**deployment, "spec": {**deployment["spec"], "replicas": "2"}}
    for broken in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, version, strict=True)


def test_cpu_deployment() -> None:
    objects = _by_kind(render(**cpu_case()))
    assert set(objects) == {"Deployment", "ConfigMap", "Service"}  # no token: no Secret
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"] == {
        "requests": {"cpu": "2", "memory": "4096Mi"},
        "limits": {"cpu": "2", "memory": "4096Mi"},
    }
    assert "tolerations" not in pod
    assert container["image"] == SETTINGS.image
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert pod["terminationGracePeriodSeconds"] > SETTINGS.drain_seconds
    env = {e["name"]: e for e in container["env"]}
    assert env["EAS_STORE"]["valueFrom"]["secretKeyRef"] == {"name": "autoai-store", "key": "url"}
    assert "EAS_TOKEN" not in env
    assert env["EAS_INSECURE"] == {"name": "EAS_INSECURE", "value": "true"}  # else refused
    assert env["EAS_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert objects["Service"]["spec"]["clusterIP"] == "None"


def test_gpu_deployment_takes_the_gpu_image_and_a_token_secret() -> None:
    case = CASES["blade-gpu"]()
    objects = _by_kind(render(**case, owner_uid=OWNER_UID))
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == SETTINGS.gpu_image
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in container["resources"]["requests"]
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    secret = objects["Secret"]
    assert secret["stringData"] == {"token": case["service_json"]["token"]}
    env = {e["name"]: e for e in container["env"]}
    assert env["EAS_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
    assert "EAS_INSECURE" not in env  # the token guards the pod IP
    for kind in ("ConfigMap", "Service", "Secret"):
        (owner,) = objects[kind]["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": objects["Deployment"]["metadata"]["name"],
            "uid": OWNER_UID,
        }
    assert "ownerReferences" not in objects["Deployment"]["metadata"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_pods_pass_the_servers_loopback_rule(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pod binds its IP, beyond loopback: eas-server, given the rendered environment and
    service JSON, must start there, with the token, or with EAS_INSECURE only when it has none."""
    objects = _by_kind(render(**CASES[case]()))
    (container,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    secret = objects.get("Secret", {"metadata": {"name": None}})
    for name in [n for n in os.environ if n.startswith("EAS_")]:
        monkeypatch.delenv(name)
    for var in container["env"]:
        source = var.get("valueFrom", {})
        if "value" in var:
            value = var["value"]
        elif source.get("fieldRef", {}).get("fieldPath") == "status.podIP":
            value = "10.244.1.7"
        elif source["secretKeyRef"]["name"] == secret["metadata"]["name"]:
            value = secret["stringData"][source["secretKeyRef"]["key"]]
        else:
            value = "sqlite:///store.db"  # the store's Secret, not rendered here
        monkeypatch.setenv(var["name"], value)
    config = tmp_path / "service.json"
    config.write_text(objects["ConfigMap"]["data"]["service.json"])
    model = tmp_path / "model.onnx"  # the repository's volume is not here: any existing path
    model.touch()
    server = ServerSettings.load({"model": str(model)}, load_service_json(config))
    assert server.host == "10.244.1.7"
    assert server.insecure is ("token" not in CASES[case]()["service_json"])
    assert server.insecure or not server.exposed_without_token


def test_no_owner_references_without_the_uid() -> None:
    for obj in render(**CASES["blade-gpu"]()):
        assert "ownerReferences" not in obj["metadata"]


def test_a_model_outside_the_repository_is_refused() -> None:
    case = cpu_case()
    case["service_json"] = {**case["service_json"], "model_path": "/home/me/model.onnx"}
    with pytest.raises(InvalidRequest, match="not under the repository"):
        render(**case)


@pytest.mark.parametrize(
    ("key", "value"),
    [("instance", 0), ("cpu", "2"), ("gpu", -1), ("memory", "lots"), ("memory", 0), ("cpu", True)],
)
def test_malformed_metadata_never_reaches_render(key: str, value: object) -> None:
    metadata = {"instance": 2, "cpu": 2, "memory": 4096, key: value}
    with pytest.raises(ValidationError, match=rf"metadata\.{key} is {re.escape(repr(value))}"):
        DeploySpec.model_validate({"metadata": metadata})


def test_long_names_are_shortened_stably() -> None:
    name = "m" * 63
    assert len(object_name(f"{name}-12")) == 63
    assert object_name(f"{name}-12") == object_name(f"{name}-12")
    assert object_name(f"{name}-12") != object_name(f"{name}-13")
    assert _DNS_LABEL.match(object_name(f"{name}-12"))
    assert len(label_value(f"{name}-12")) == 63
    with pytest.raises(InvalidRequest):
        label_value("no spaces")


def test_extra_labels_cannot_override_ours() -> None:
    case = cpu_case()
    case["settings"] = SETTINGS.model_copy(
        update={"labels": {"team": "search", "app.kubernetes.io/managed-by": "helm"}}
    )
    for obj in render(**case):
        assert obj["metadata"]["labels"]["team"] == "search"
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "autoai"


_names = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True)


@hypothesis_settings(max_examples=60, deadline=None)
@given(
    name=_names,
    version=st.integers(1, 10**6).map(str),
    instance=st.integers(1, 16),
    cpu=st.integers(1, 64),
    gpu=st.integers(0, 8),
    memory=st.one_of(st.none(), st.integers(1, 10**6), st.sampled_from(["512Mi", "4Gi", "1.5G"])),
    token=st.one_of(st.none(), st.text(min_size=1, max_size=40)),
    blade=st.booleans(),
)
def test_properties(
    name: str,
    version: str,
    instance: int,
    cpu: int,
    gpu: int,
    memory: int | str | None,
    token: str | None,
    blade: bool,
) -> None:
    service = f"{name}-{version}"
    processor = "blade" if blade else "onnx"
    service_json: dict[str, Any] = {
        "name": name,
        "version": version,
        "processor": processor,
        "model_path": f"{REPO}/artifacts/{service}",
        "metadata": {},
    }
    if token is not None:
        service_json["token"] = token
    metadata: dict[str, Any] = {"instance": instance, "cpu": cpu, "gpu": gpu}
    if memory is not None:
        metadata["memory"] = memory
    objects = render(
        name=name,
        version=version,
        service=service,
        processor=processor,
        service_json=service_json,
        spec=DeploySpec.model_validate({"metadata": metadata}),
        settings=SETTINGS,
        repo_dir=REPO,
        owner_uid=OWNER_UID,
    )
    kinds = _by_kind(objects)
    deployment = kinds["Deployment"]
    assert deployment["spec"]["replicas"] == instance
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    limits = container["resources"]["limits"]
    assert ("nvidia.com/gpu" in limits) == (gpu > 0)
    if gpu > 0:
        assert limits["nvidia.com/gpu"] == str(gpu)
    assert container["resources"]["requests"]["cpu"] == limits["cpu"] == str(cpu)
    config = kinds["ConfigMap"]["data"]["service.json"]
    assert "token" not in json.loads(config)
    if token is not None:
        assert kinds["Secret"]["stringData"]["token"] == token
    else:
        assert "Secret" not in kinds
    match = deployment["spec"]["selector"]["matchLabels"]
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert match.items() <= template_labels.items()
    assert kinds["Service"]["spec"]["selector"] == match
    for obj in objects:
        meta = obj["metadata"]
        assert _DNS_LABEL.match(meta["name"]), meta["name"]
        assert meta["annotations"]["autoai.io/service"] == service
        assert meta["labels"]["app.kubernetes.io/name"] == "eas-server"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "autoai"
        assert meta["labels"]["autoai.io/model"] == name
        assert meta["labels"]["autoai.io/version"] == label_value(version)
        assert meta["labels"]["autoai.io/processor"] == processor
        assert all(_LABEL_VALUE.match(v) for v in meta["labels"].values())
        kubernetes_validate.validate(obj, VERSIONS[-1], strict=True)


def test_settings_are_frozen_and_strict() -> None:
    with pytest.raises(ValueError):
        KubernetesSettings(namespace="x", unknown=1)  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        KubernetesSettings(control_plane="Not A Label")
