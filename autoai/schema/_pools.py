"""Pools: shared multi-model ``eas-server`` instances that pooled deployments are loaded onto.

What the control plane stores (``control`` group):

- ``pool.<name>``: a ``PoolRecord`` (written by the deploy that created the pool; the reconciler
  rewrites it by compare-and-swap when it restarts an instance, a resize rewrites its size);

what it accepts (``PoolScaleRequest``), what it answers (``Pool``, ``PoolList``), and what it
reads from each pool instance (``MemberResources``: eas-server's ``GET /v2/resources``, the input
of placement). Which pool
instances host a pooled version is in its deployment record (``PooledPlacement``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, StrictInt

from ._base import Document, Request
from ._deploy import InstanceHealth, InstanceSlot, KubernetesObjects, Placement
from ._spec import MAX_INSTANCES

__all__ = [
    "GpuMemory",
    "HostedModel",
    "MemberResources",
    "Pool",
    "PoolList",
    "PoolRecord",
    "PoolScaleRequest",
]


class _PoolFields(Document):
    schema_version: Literal[1] = Field(1, description="The record's schema version (1).")
    name: str = Field(description="The pool (metadata.pool of the deploys that use it).")
    service: str = Field(description="The service its instances register under (pool-NAME).")
    size: int = Field(ge=1, description="How many instances it runs.")
    orchestrator: str = Field(
        "local", description='The orchestrator that runs its instances ("local", "kubernetes").'
    )
    kubernetes: KubernetesObjects | None = Field(
        None, description="Its Kubernetes objects (the Kubernetes orchestrator only)."
    )
    created: float = Field(description="When it was created (Unix seconds).")
    created_by: str = Field("", description="The deploy that created it (model and version).")


class PoolRecord(_PoolFields):
    """What a pool stores under ``control/pool.<name>``."""

    model_config = ConfigDict(extra="allow")

    instances: list[InstanceSlot] = Field(
        default_factory=list, description="The orchestrator's entry for each instance."
    )

    @property
    def placement(self) -> Placement:
        """The orchestrator's part of the record."""
        return Placement(instances=self.instances, kubernetes=self.kubernetes)


class Pool(_PoolFields):
    """A pool as the API describes it: its instances' health and the versions loaded on it."""

    instances: list[InstanceHealth] = Field(description="Each instance with alive and ready.")
    deployments: list[str] = Field(
        description="The pooled deployments on it, as NAME/VERSION, by name then version."
    )


class PoolList(Document):
    """``GET /api/v1/pools``: by name."""

    pools: list[Pool] = Field(description="Every pool.")


class PoolScaleRequest(Request):
    """The body of ``POST /api/v1/pools/{name}/scale``: ``{"instances": N}``."""

    instances: StrictInt = Field(
        ge=1,
        le=MAX_INSTANCES,
        description="The pool's new number of instances: at least the largest metadata.instance "
        "of a deployment on it.",
    )


class GpuMemory(Document):
    """One GPU of a pool instance, as it reports it."""

    index: int = Field(description="The device's index.")
    used_bytes: int = Field(ge=0, description="Memory in use on it (every process).")
    total_bytes: int = Field(ge=0, description="Its memory.")


class HostedModel(Document):
    """One model version a pool instance hosts, as it reports it."""

    name: str = Field(description="The model.")
    version: str = Field(description="The version.")
    state: str = Field(description="READY, LOADING, UNLOADING or UNAVAILABLE.")
    memory_bytes: int = Field(0, ge=0, description="Host memory its load added (RSS growth).")
    gpu_memory_bytes: int | None = Field(None, description="GPU memory its load added.")
    queue_depth: int = Field(0, ge=0, description="Requests waiting in its queue now.")
    inference_count: int = Field(0, ge=0, description="Inferences it ran since it was loaded.")


class MemberResources(Document):
    """A pool instance's ``GET /v2/resources``: what placement reads."""

    rss_bytes: int = Field(0, ge=0, description="The instance's resident memory.")
    memory_total_bytes: int = Field(ge=0, description="The host's (or container's) memory.")
    memory_available_bytes: int = Field(ge=0, description="What of it is available now.")
    gpus: list[GpuMemory] = Field(default_factory=list, description="Its GPUs (none on CPU).")
    models: list[HostedModel] = Field(default_factory=list, description="What it hosts.")

    def hosts(self, name: str, version: str) -> bool:
        """Whether it hosts (or is loading) ``name`` ``version``."""
        return any(
            m.name == name and m.version == version and m.state in ("READY", "LOADING")
            for m in self.models
        )
