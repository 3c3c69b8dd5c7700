"""``KubernetesSettings``: where and how model servers run on Kubernetes (plain data, no client)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["KubernetesSettings"]


class KubernetesSettings(BaseModel):
    """The Kubernetes orchestrator's settings (``AUTOAI_KUBERNETES__<FIELD>`` in the environment).

    The control plane and its model servers share two things through the cluster: the store URL
    (a Secret both read) and the model repository (a PersistentVolumeClaim mounted at the
    control plane's ``repo_dir`` on both sides, read-only in model servers).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    namespace: str = "default"
    """Namespace of the model servers' objects (the control plane's own in ``deploy/k8s``)."""
    image: str = "autoai/eas-server:0.1.0"
    """The eas-server image (CPU)."""
    gpu_image: str | None = None
    """The eas-server image for deployments with ``metadata.gpu`` > 0 (default: ``image``)."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    """The containers' ``imagePullPolicy``."""
    store_secret: str = "autoai-store"
    """The Secret that holds the store URL (``zk://...``) the model servers register in."""
    store_secret_key: str = "url"
    """Its key holding the URL."""
    repository_claim: str = "autoai-models"
    """The PersistentVolumeClaim of the model repository (ReadWriteMany or ReadOnlyMany:
    the control plane writes it, every model server reads it)."""
    port: int = Field(default=8000, ge=1024, le=65535)
    """The port model servers listen on in their pods (non-root: 1024 and up)."""
    drain_seconds: float = Field(default=30.0, ge=0)
    """How long a model server keeps serving after SIGTERM (``EAS_DRAIN_TIMEOUT_S``); the pods'
    ``terminationGracePeriodSeconds`` adds a margin to it."""
    default_memory: str = "2Gi"
    """Memory request and limit of an instance when the spec has no ``metadata.memory``."""
    run_as_user: int = Field(default=10001, ge=1)
    """The non-root UID (and GID) model servers run as; the image's user."""
    service_account: str | None = None
    """The model servers' ServiceAccount (None: the namespace's default; its token is never
    mounted, model servers do not call the API)."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node selector of every model server pod."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Extra labels on every object (ours win on a clash)."""
    control_plane: str = Field(default="autoai", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    """This control plane's name: labelled on its objects, so that reconciliation only removes
    its own in a namespace that several control planes share."""
    start_timeout: float = Field(default=600.0, gt=0)
    """Seconds a launch or scale-up waits for every instance to register (image pulls included)."""
    sweep_interval: float = Field(default=60.0, ge=0)
    """Seconds between the leader's passes removing Deployments that no record names (also run
    when this replica becomes leader; 0: only then)."""
    kubeconfig: str | None = None
    """A kubeconfig file (None: the in-cluster ServiceAccount inside a pod, else ``KUBECONFIG``
    or ``~/.kube/config``)."""
    context: str | None = None
    """The kubeconfig context (None: its current one)."""
