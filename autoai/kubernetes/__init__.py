"""The Kubernetes orchestrator (``autoai up --orchestrator kubernetes``).

``render`` (pure) turns a deployment into a Deployment, a ConfigMap, a headless Service and, given a
token, a Secret; ``KubernetesOrchestrator`` applies them with the official client (the
``[kubernetes]`` extra, imported only when one is built) and waits for the pods to register in the
store; ``Sweeper`` deletes, on the leader, Deployments that no record names. See
docs/kubernetes.md.
"""

from ._orchestrator import FIELD_MANAGER, KubernetesError, KubernetesOrchestrator, api_client
from ._render import label_value, labels, object_name, render, selector
from ._settings import KubernetesSettings
from ._sweeper import Sweeper, known_services

__all__ = [
    "FIELD_MANAGER",
    "KubernetesError",
    "KubernetesOrchestrator",
    "KubernetesSettings",
    "Sweeper",
    "api_client",
    "known_services",
    "label_value",
    "labels",
    "object_name",
    "render",
    "selector",
]
