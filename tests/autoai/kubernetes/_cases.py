"""The deployments the rendering tests use: a plain CPU one and a blade GPU one."""

from __future__ import annotations

from typing import Any, Final

from autoai.kubernetes import KubernetesSettings
from autoai.schema import DeploySpec

REPO: Final = "/var/lib/autoai/repo"
VERSIONS: Final = ("1.30.0", "1.35.0")
"""Kubernetes versions every object is validated against (kubernetes-validate ships both)."""
SETTINGS: Final = KubernetesSettings(
    namespace="autoai", image="autoai/eas-server:0.1.0", gpu_image="autoai/eas-server-gpu:0.1.0"
)


def cpu_case() -> dict[str, Any]:
    """intent-cls version 1 on ONNX Runtime: two instances of 2 cores and 4096 MB."""
    return {
        "name": "intent-cls",
        "version": "1",
        "service": "intent-cls-1",
        "processor": "onnx",
        "service_json": {
            "name": "intent-cls",
            "version": "1",
            "processor": "onnx",
            "model_path": f"{REPO}/blobs/sha256/3f/3f2a9c.onnx",
            "metadata": {"rpc": {"max_batch_size": 32}, "intra_op_threads": 2},
        },
        "spec": DeploySpec.model_validate({"metadata": {"instance": 2, "cpu": 2, "memory": 4096}}),
        "settings": SETTINGS,
        "repo_dir": REPO,
    }


def gpu_case() -> dict[str, Any]:
    """bert-base version 3, blade-optimized: one instance with a GPU, 16Gi and a token."""
    return {
        "name": "bert-base",
        "version": "3",
        "service": "bert-base-3",
        "processor": "blade",
        "service_json": {
            "name": "bert-base",
            "version": "3",
            "processor": "blade",
            "model_path": f"{REPO}/artifacts/bert-base-3",
            "metadata": {"rpc": {"max_batch_size": 64, "max_batch_timeout": 10}},
            "token": "example-token-not-a-secret",
        },
        "spec": DeploySpec.model_validate(
            {
                "metadata": {"instance": 1, "cpu": 4, "memory": "16Gi", "gpu": 1},
                "processor": "blade",
            }
        ),
        "settings": SETTINGS,
        "repo_dir": REPO,
    }


CASES: Final = {"cpu": cpu_case, "blade-gpu": gpu_case}
OWNER_UID: Final = "8d5f3a52-6b7e-4c1e-9f0a-2c4b6d8e0f13"
