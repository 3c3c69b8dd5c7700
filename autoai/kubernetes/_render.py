"""Render one deployed (model, version, processor) into Kubernetes objects. Pure: no client, no I/O.

``render`` returns plain dicts (the API's JSON form), in the order they are applied:

- a **Deployment** of ``eas-server`` pods: ``replicas`` = ``metadata.instance``; requests = limits
  from ``metadata.cpu`` (cores, default 1) and ``metadata.memory`` (MB, EAS's unit, or a
  Kubernetes quantity such as ``"4Gi"``); ``nvidia.com/gpu`` limits from ``metadata.gpu`` when
  above 0 (the ``DeploySpec`` has checked every value); a
  startup probe on ``/v2/health/live`` (models load before the port opens), liveness on
  ``/v2/health/live``, readiness on ``/v2/health/ready``; a grace period longer than the drain.
  The model comes from the repository's PersistentVolumeClaim, mounted read-only at the control
  plane's ``repo_dir`` (the service JSON names paths under it); the store URL and the token come
  from Secrets through ``EAS_STORE`` / ``EAS_TOKEN`` (without a token, ``EAS_INSECURE=true``: the
  server serves the pod IP without one, as deployed); the pod IP is what the server binds and
  registers (``EAS_HOST``), so clients reach it through the store as before;
- a **ConfigMap** with the service JSON, token removed;
- a headless **Service** (DNS names for the pods; discovery stays in the store);
- a **Secret** with the token, only when the service JSON has one.

A pool (``pool=True``: a service JSON with ``model_repository`` and no model) renders the same
objects for ``eas-server --model-repository``: the repository is an ``emptyDir`` at
``POOL_REPOSITORY`` (the control plane loads versions by their paths under ``repo_dir``, mounted as
for any deployment), and the labels name the pool (``autoai.io/pool``) instead of a model version.

Every object carries ``app.kubernetes.io/name=eas-server``, ``app.kubernetes.io/managed-by=autoai``
and ``autoai.io/{control-plane,model,version,processor,service}`` labels, and the exact service
name in the ``autoai.io/service`` annotation. Given ``owner_uid``, the ConfigMap, Service and
Secret name the Deployment as their owner, so deleting it deletes them all.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any, Final

from ..errors import InvalidRequest
from ..schema import DeployMetadata, DeploySpec
from ._settings import KubernetesSettings

__all__ = [
    "CONFIG_DIR",
    "CONTAINER",
    "GPU_RESOURCE",
    "MANAGED_BY",
    "POOL_REPOSITORY",
    "SERVICE_ANNOTATION",
    "label_value",
    "labels",
    "object_name",
    "pool_labels",
    "render",
    "selector",
]

MANAGED_BY: Final = "autoai"
CONTAINER: Final = "eas-server"
GPU_RESOURCE: Final = "nvidia.com/gpu"
SERVICE_ANNOTATION: Final = "autoai.io/service"
CONFIG_DIR: Final = "/etc/autoai"
POOL_REPOSITORY: Final = "/var/lib/eas-server/models"
"""Where a pool's pods keep their (empty, writable) model repository."""
_GRACE_MARGIN_S: Final = 15  # after the drain: uvicorn's shutdown, the runtime's close
_STARTUP_PERIOD_S: Final = 5
_LABEL_VALUE = re.compile(r"^(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


def _shorten(text: str, limit: int = 63) -> str:
    """``text`` if it fits, else a prefix and 8 hex digits of its hash (stable, unique)."""
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{text[: limit - 9].rstrip('-_.')}-{digest}"


def object_name(service: str) -> str:
    """The name of a service's Deployment, ConfigMap and Service: ``eas-<service>``, a DNS label
    (model names are DNS labels, versions digits; long ones are shortened with a hash)."""
    return _shorten(f"eas-{service}")


def label_value(value: str) -> str:
    """``value`` as a label value (at most 63 characters; shortened with a hash beyond).

    Raises:
        InvalidRequest: it has characters a label value cannot hold.
    """
    short = _shorten(value)
    if not _LABEL_VALUE.match(short):
        raise InvalidRequest(f"{value!r} cannot be a Kubernetes label value", {"value": value})
    return short


def selector(service: str, settings: KubernetesSettings) -> dict[str, str]:
    """The labels that select a service's pods (a Deployment's selector cannot change)."""
    return {
        "app.kubernetes.io/name": "eas-server",
        "autoai.io/control-plane": settings.control_plane,
        "autoai.io/service": label_value(service),
    }


def labels(
    name: str, version: str, service: str, processor: str, settings: KubernetesSettings
) -> dict[str, str]:
    """Every label of a service's objects (the settings' extra labels first: ours win)."""
    return {
        **settings.labels,
        "app.kubernetes.io/name": "eas-server",
        "app.kubernetes.io/instance": object_name(service),
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "autoai.io/control-plane": settings.control_plane,
        "autoai.io/model": label_value(name),
        "autoai.io/version": label_value(version),
        "autoai.io/processor": label_value(processor),
        "autoai.io/service": label_value(service),
    }


def pool_labels(pool: str, service: str, settings: KubernetesSettings) -> dict[str, str]:
    """Every label of a pool's objects: as a model version's, naming the pool instead."""
    return {
        **settings.labels,
        "app.kubernetes.io/name": "eas-server",
        "app.kubernetes.io/instance": object_name(service),
        "app.kubernetes.io/component": "model-pool",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "autoai.io/control-plane": settings.control_plane,
        "autoai.io/pool": label_value(pool),
        "autoai.io/processor": "repository",
        "autoai.io/service": label_value(service),
    }


def _memory(value: int | str | None, default: str) -> str:
    """MB (EAS's unit) as a quantity; a quantity as given."""
    if value is None:
        return default
    return f"{value}Mi" if isinstance(value, int) else value


def _resources(metadata: DeployMetadata, settings: KubernetesSettings) -> dict[str, Any]:
    amounts: dict[str, Any] = {
        "cpu": str(metadata.cpu or 1),
        "memory": _memory(metadata.memory, settings.default_memory),
    }
    out: dict[str, Any] = {"requests": dict(amounts), "limits": dict(amounts)}
    if metadata.gpu:  # an extended resource: its request defaults to the limit
        out["limits"][GPU_RESOURCE] = str(metadata.gpu)
    return out


def _owned(meta: dict[str, Any], deployment: str, owner_uid: str | None) -> dict[str, Any]:
    if owner_uid is not None:
        meta["ownerReferences"] = [
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment, "uid": owner_uid}
        ]
    return meta


def _env(service: str, settings: KubernetesSettings, token_secret: str | None) -> list[Any]:
    env: list[dict[str, Any]] = [
        # Bind the pod IP and register it: the store is how clients find instances.
        {"name": "EAS_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "EAS_PORT", "value": str(settings.port)},
        {"name": "EAS_SERVICE", "value": service},
        {"name": "EAS_DRAIN_TIMEOUT_S", "value": f"{settings.drain_seconds:g}"},
        {
            "name": "EAS_STORE",
            "valueFrom": {
                "secretKeyRef": {"name": settings.store_secret, "key": settings.store_secret_key}
            },
        },
    ]
    if token_secret is not None:
        env.append(
            {
                "name": "EAS_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": token_secret, "key": "token"}},
            }
        )
    else:
        # eas-server refuses to bind beyond loopback (the pod IP) without a token unless told so.
        # A service deployed without a token is open by the deployer's choice, and within the
        # cluster the Service and its network policies are the boundary, as for the local
        # orchestrator's loopback instances.
        env.append({"name": "EAS_INSECURE", "value": "true"})
    return env


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _container(
    service: str,
    image: str,
    metadata: DeployMetadata,
    settings: KubernetesSettings,
    repo_dir: str,
    token_secret: str | None,
) -> dict[str, Any]:
    startup_failures = max(1, math.ceil(settings.start_timeout / _STARTUP_PERIOD_S))
    return {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["python", "-m", "eas_server", "--config", f"{CONFIG_DIR}/service.json"],
        "env": _env(service, settings, token_secret),
        "ports": [{"name": "http", "containerPort": settings.port, "protocol": "TCP"}],
        "resources": _resources(metadata, settings),
        "startupProbe": _probe("/v2/health/live", _STARTUP_PERIOD_S, startup_failures),
        "livenessProbe": _probe("/v2/health/live", 10, 3),
        "readinessProbe": _probe("/v2/health/ready", 5, 2),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "repository", "mountPath": repo_dir, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }


def render(
    *,
    name: str,
    version: str,
    service: str,
    processor: str,
    service_json: Mapping[str, Any],
    spec: DeploySpec,
    settings: KubernetesSettings,
    repo_dir: str,
    owner_uid: str | None = None,
    pool: bool = False,
) -> list[dict[str, Any]]:
    """The objects of one deployment: Deployment, ConfigMap, Service, and a Secret with a token.

    Args:
        name, version, service, processor: the deployment (``service`` is ``name-version``);
            for a pool, ``name`` is the pool's and ``version`` is not used.
        service_json: the eas-server service JSON (``model_path`` under ``repo_dir``; a pool's
            has ``model_repository`` at ``POOL_REPOSITORY`` instead).
        spec: the deploy spec (``metadata.instance``, ``cpu``, ``memory``, ``gpu``).
        settings: namespace, images, Secret and claim names, drain time.
        repo_dir: where the repository is mounted, the control plane's ``repo_dir``.
        owner_uid: the applied Deployment's uid; its dependents then name it as their owner.
        pool: render a pool's instances (``eas-server --model-repository``).

    Raises:
        InvalidRequest: a model path outside ``repo_dir``, or a name no label value can hold.
    """
    metadata = spec.metadata
    replicas = metadata.instance
    model_path = PurePosixPath(str(service_json.get("model_path", "")))
    if pool and service_json.get("model_repository") != POOL_REPOSITORY:
        raise InvalidRequest(
            f"a pool's model_repository must be {POOL_REPOSITORY} (its pods' emptyDir)",
            {"model_repository": service_json.get("model_repository")},
        )
    if not pool and (not model_path.is_absolute() or not model_path.is_relative_to(repo_dir)):
        raise InvalidRequest(
            f"model path {model_path} is not under the repository {repo_dir}, the only volume "
            "model server pods mount",
            {"model_path": str(model_path), "repo_dir": repo_dir},
        )
    gpu = metadata.gpu or 0
    image = (settings.gpu_image or settings.image) if gpu > 0 else settings.image
    deployment = object_name(service)
    token = service_json.get("token")
    token_secret = f"{deployment[:57].rstrip('-')}-token" if token else None
    config = json.dumps(
        {k: v for k, v in service_json.items() if k != "token"}, indent=2, sort_keys=True
    )
    common = (
        pool_labels(name, service, settings)
        if pool
        else labels(name, version, service, processor, settings)
    )
    annotations = {SERVICE_ANNOTATION: service}
    pod_annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(settings.port),
        "prometheus.io/path": "/metrics",
        # a changed service JSON (same name) rolls the pods
        "autoai.io/config-sha256": hashlib.sha256(config.encode()).hexdigest(),
    }

    def meta(object_name: str) -> dict[str, Any]:
        return {
            "name": object_name,
            "namespace": settings.namespace,
            "labels": dict(common),
            "annotations": dict(annotations),
        }

    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": math.ceil(settings.drain_seconds) + _GRACE_MARGIN_S,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_user,
            "fsGroup": settings.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(service, image, metadata, settings, repo_dir, token_secret)],
        "volumes": [
            {"name": "config", "configMap": {"name": deployment}},
            {
                "name": "repository",
                "persistentVolumeClaim": {"claimName": settings.repository_claim, "readOnly": True},
            },
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    if pool:  # the repository the pool's server starts from: empty, and writable
        pod_spec["volumes"].append({"name": "pool-repository", "emptyDir": {}})
        pod_spec["containers"][0]["volumeMounts"].append(
            {"name": "pool-repository", "mountPath": POOL_REPOSITORY}
        )
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
    if settings.node_selector:
        pod_spec["nodeSelector"] = dict(settings.node_selector)
    if gpu > 0:  # GPU node pools are commonly tainted
        pod_spec["tolerations"] = [
            {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
        ]
    match = selector(service, settings)
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta(deployment),
            "spec": {
                "replicas": replicas,
                "revisionHistoryLimit": 2,
                "selector": {"matchLabels": match},
                # never fewer serving instances than asked while pods are replaced
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
                },
                "template": {
                    "metadata": {"labels": dict(common), "annotations": pod_annotations},
                    "spec": pod_spec,
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _owned(meta(deployment), deployment, owner_uid),
            "data": {"service.json": config},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _owned(meta(deployment), deployment, owner_uid),
            "spec": {
                "clusterIP": "None",
                "selector": match,
                "ports": [{"name": "http", "port": settings.port, "targetPort": "http"}],
            },
        },
    ]
    if token_secret is not None:
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": _owned(meta(token_secret), deployment, owner_uid),
                "type": "Opaque",
                "stringData": {"token": str(token)},
            }
        )
    return objects
