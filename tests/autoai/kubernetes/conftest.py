"""A real Kubernetes API server for the ``k8s`` tests, or a skip that says why there is none.

``KUBECONFIG`` must name a kubeconfig whose current context reaches an API server (a kind or
minikube cluster will do); each test module gets its own namespace (Pod Security ``restricted``
enforced, as in deploy/k8s), deleted afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def api_client() -> Any:
    path = os.environ.get("KUBECONFIG")
    if not path:
        pytest.skip("KUBECONFIG is not set: no Kubernetes API server to test against")
    import kubernetes

    try:
        client = kubernetes.config.new_client_from_config(config_file=path.split(os.pathsep)[0])
    except Exception as exc:
        pytest.skip(f"KUBECONFIG={path} is not usable: {exc}")
    try:
        kubernetes.client.VersionApi(client).get_code(_request_timeout=5)
    except Exception as exc:
        pytest.skip(f"the API server of KUBECONFIG={path} cannot be reached: {exc}")
    return client


@pytest.fixture(scope="module")
def namespace(api_client: Any) -> Iterator[str]:
    import kubernetes

    core = kubernetes.client.CoreV1Api(api_client)
    name = f"autoai-test-{uuid.uuid4().hex[:8]}"
    labels = {"pod-security.kubernetes.io/enforce": "restricted"}
    meta = kubernetes.client.V1ObjectMeta(name=name, labels=labels)
    core.create_namespace(kubernetes.client.V1Namespace(metadata=meta))
    try:
        yield name
    finally:
        core.delete_namespace(name, propagation_policy="Background")
