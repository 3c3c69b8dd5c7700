"""Deploy specs, deployment records, jobs and model versions (issue 17).

What the control plane stores in its ``control`` group, one document per key, each written as
``model_dump_json()`` and read back with ``model_validate_json``:

- ``deployment.<name>.<version>``: a ``DeploymentRecord`` (the deploy job writes it last; scale and
  the reconciler rewrite it by compare-and-swap);
- ``operation.<name>.<version>``: an ``OperationMarker`` while a deploy, scale or undeploy runs;

And what the API answers: ``Deployment`` (a record described with its instances' health and
endpoints), ``JobInfo``, ``Health``, ``TargetGroup``, and ``ErrorAnswer`` for every refusal. The
deploy and scale bodies are in ``_spec``; model versions and their records in ``_models``.

Records that are read, changed and written back (``DeploymentRecord``, ``ModelRecord``) keep the
fields they do not know (``extra="allow"``), so a replica of an older version rewriting a record
does not drop what a newer one added. A stored spec is read leniently: what the current
``DeploySpec`` would refuse is left out of it, never the record (a record must stay readable, or
nothing could reconcile or undeploy it).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

from pydantic import (
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
)

from ._base import Document
from ._routes import BladeMeta
from ._spec import (
    BLADE_OPTIONS,
    DEFAULT_POOL_INSTANCES,
    MAX_INSTANCES,
    POOL_NAME,
    BladeOptions,
    DeployMetadata,
    DeploySpec,
    PaddedInput,
    PaddingSpec,
    RpcOptions,
    ScaleMetadata,
    ScaleRequest,
    fold_dotted,
)

log = logging.getLogger("autoai.schema")

__all__ = [
    "BLADE_OPTIONS",
    "DEFAULT_POOL_INSTANCES",
    "MAX_INSTANCES",
    "POOL_NAME",
    "BladeOptions",
    "DeployMetadata",
    "DeploySpec",
    "Deployment",
    "DeploymentList",
    "DeploymentRecord",
    "ErrorAnswer",
    "Health",
    "InstanceHealth",
    "InstanceSlot",
    "JobAccepted",
    "JobError",
    "JobInfo",
    "JobResult",
    "JobState",
    "KubernetesObjects",
    "LocalInstance",
    "LocalInstanceHealth",
    "OperationMarker",
    "PaddedInput",
    "PaddingSpec",
    "Placement",
    "PodHealth",
    "PodSlot",
    "PoolMove",
    "PooledPlacement",
    "RpcOptions",
    "ScaleMetadata",
    "ScaleRequest",
    "TargetGroup",
    "fold_dotted",
]

_SALVAGE_ROUNDS: Final = 20


# -- where instances run ------------------------------------------------------------------------


class LocalInstance(Document):
    """An ``eas-server`` process the local orchestrator started: enough to find, adopt or stop
    it later (``autoai.orchestrators.InstanceRecord``)."""

    pid: int = Field(description="Its process id.")
    args: list[str] = Field(
        default_factory=list,
        description="Its command line: a recorded PID counts only while it runs this (empty: "
        "any command line, for a process found by its service JSON).",
    )
    log: str = Field("", description="Its log file.")
    started: float = Field(0.0, description="When it was started (Unix seconds).")
    host: str = Field("", description="The host it runs on (the local orchestrator's).")
    port: int = Field(0, description="Where it listens (known once it registered).")
    restarts: int = Field(0, description="How many times this slot was restarted after a crash.")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LocalInstance:
        """The instance from its record entry (``model_validate``; kept for older callers)."""
        return cls.model_validate(data)


class PodSlot(Document):
    """One replica of a Kubernetes deployment: the pod that registered, or nulls for a replica
    no pod serves yet (which pods serve is Kubernetes's to change; health reads the live ones)."""

    pod: str | None = Field(description="The pod's name.")
    ip: str | None = Field(description="The pod IP it registered with.")
    port: int | None = Field(description="The port it registered with.")


def _slot_kind(value: Any) -> str:
    if isinstance(value, Mapping):
        return "local" if "pid" in value else "pod"
    return "local" if isinstance(value, LocalInstance) else "pod"


InstanceSlot = Annotated[
    Annotated[LocalInstance, Tag("local")] | Annotated[PodSlot, Tag("pod")],
    Discriminator(_slot_kind),
]
"""A record's instance: a local process or a Kubernetes replica."""


class KubernetesObjects(Document):
    """The objects a Kubernetes deployment was applied as."""

    namespace: str = Field(description="Their namespace.")
    deployment: str = Field(description="The Deployment (it owns the others).")
    service: str = Field(description="The headless Service.")
    configmap: str = Field(description="The ConfigMap holding the service JSON.")
    secret: str | None = Field(None, description="The Secret holding the token, if any.")


class Placement(Document):
    """What an orchestrator records about where a deployment's instances run: ``launch`` and
    ``resize`` return it, the other calls read it back."""

    instances: list[InstanceSlot] = Field(
        default_factory=list, description="One entry per instance (replica)."
    )
    kubernetes: KubernetesObjects | None = Field(
        None, description="The Kubernetes objects (the Kubernetes orchestrator only)."
    )


class LocalInstanceHealth(LocalInstance):
    """A local instance as described: is its process running, is it registered."""

    alive: bool = Field(description="Its process runs (this host's orchestrator found it).")
    ready: bool = Field(description="It is registered in the store (serving).")


class PodHealth(Document):
    """A Kubernetes replica as described (or a registration no live pod has)."""

    pod: str | None = Field(description="The pod (null: a registration without a live pod).")
    ip: str | None = Field(description="The pod IP.")
    port: int | None = Field(description="The port it registered with.")
    node: str | None = Field(None, description="The node it runs on.")
    phase: str | None = Field(None, description="The pod's phase.")
    restarts: int = Field(0, description="Its containers' restarts.")
    alive: bool = Field(description="The pod is running.")
    ready: bool = Field(description="It is registered in the store (serving).")
    error: str | None = Field(
        None, description="Why pods could not be listed (the registrations alone are shown)."
    )


def _health_kind(value: Any) -> str:
    if isinstance(value, Mapping):
        return "local" if "pid" in value else "pod"
    return "local" if isinstance(value, LocalInstanceHealth) else "pod"


InstanceHealth = Annotated[
    Annotated[LocalInstanceHealth, Tag("local")] | Annotated[PodHealth, Tag("pod")],
    Discriminator(_health_kind),
]
"""An instance as described: a local process or a Kubernetes replica."""


class PoolMove(Document):
    """One change of the pool instances a pooled version is loaded on, made by the reconciler
    (an instance died, or came back empty)."""

    at: float = Field(description="When (Unix seconds).")
    lost: list[str] = Field(
        default_factory=list, description="host:port of instances it is no longer on."
    )
    added: list[str] = Field(
        default_factory=list, description="host:port of instances it was loaded onto."
    )
    reason: str = Field("", description="Why, in words.")


class PooledPlacement(Document):
    """Where a pooled deployment (``metadata.pool``) is loaded: instances of a shared pool, not
    processes of its own."""

    pool: str = Field(description="The pool's name (its instances register as pool-NAME).")
    hosts: list[str] = Field(
        default_factory=list, description="host:port of the pool instances that host it."
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="The service JSON each load sends (model_path, version, processor, "
        "service, metadata; never a token): what a reload onto another instance sends again.",
    )
    model_bytes: int = Field(
        0, ge=0, description="The model's size on disk: placement's estimate of its memory."
    )
    moves: list[PoolMove] = Field(
        default_factory=list, description="The reconciler's moves, oldest first (the last 20)."
    )


# -- deployments --------------------------------------------------------------------------------


def _salvage(data: Any) -> DeploySpec:
    """A stored spec, less whatever the current model refuses (each error's field is dropped)."""
    for _ in range(_SALVAGE_ROUNDS):
        try:
            return DeploySpec.model_validate(data)
        except ValidationError as exc:
            if not isinstance(data, Mapping):
                break
            data = fold_dotted(data)
            for error in exc.errors():
                where = ".".join(str(p) for p in error["loc"]) or "the whole spec"
                log.warning("a stored deploy spec fails today's rules: dropping %s (%s)",
                            where, error["msg"])  # fmt: skip
                _drop(data, error["loc"])
    return DeploySpec()


def _drop(data: dict[Any, Any], loc: tuple[int | str, ...]) -> None:
    """Remove the value at ``loc`` (everything, for an error about the whole spec)."""
    if not loc:
        data.clear()
        return
    node: Any = data
    for part in loc[:-1]:
        if not isinstance(node, dict) or part not in node:
            return
        child = node[part]
        if isinstance(child, Mapping):
            child = node[part] = dict(child)  # a copy: the stored document stays as it was
        node = child
    if isinstance(node, dict):
        node.pop(loc[-1], None)


class _DeploymentFields(Document):
    schema_version: Literal[1] = Field(1, description="The record's schema version (1).")
    name: str = Field(description="The model.")
    version: str = Field(description="The model version.")
    service: str = Field(description="The service its instances register under (name-version).")
    processor: str = Field(description='The processor the instances run ("onnx", "blade").')
    blade: BladeMeta | None = Field(
        None, description="The optimizer's record for a blade deployment (null: plain)."
    )
    model_sha256: str = Field(description="The digest of the registered model file.")
    orchestrator: str = Field(
        "local", description='The orchestrator that runs the instances ("local", "kubernetes").'
    )
    kubernetes: KubernetesObjects | None = Field(
        None, description="The Kubernetes objects (the Kubernetes orchestrator only)."
    )
    spec: DeploySpec = Field(
        default_factory=DeploySpec, description="The deploy spec as given, without its token."
    )
    created: float = Field(description="When the deployment was recorded (Unix seconds).")
    pooled: PooledPlacement | None = Field(
        None,
        description="For a deploy into a pool (metadata.pool): the pool instances it is loaded "
        "on (instances is then empty in the record). Null: exclusive instances.",
    )

    @field_validator("spec", mode="wrap")
    @classmethod
    def _lenient_spec(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError:
            return _salvage(value)


class DeploymentRecord(_DeploymentFields):
    """What a deployment stores under ``control/deployment.<name>.<version>``."""

    model_config = ConfigDict(extra="allow")

    instances: list[InstanceSlot] = Field(
        default_factory=list, description="The orchestrator's entry for each instance."
    )

    @property
    def placement(self) -> Placement:
        """The orchestrator's part of the record."""
        return Placement(instances=self.instances, kubernetes=self.kubernetes)

    def placed(self, placement: Placement) -> DeploymentRecord:
        """This record with another placement (after a resize or a restart)."""
        return self.model_copy(
            update={"instances": placement.instances, "kubernetes": placement.kubernetes}
        )


class Deployment(_DeploymentFields):
    """A deployment as the API describes it: its record, each instance's health, and the
    addresses of the registered instances."""

    instances: list[InstanceHealth] = Field(description="Each instance with alive and ready.")
    endpoints: list[str] = Field(description="http://host:port of each registered instance.")

    @classmethod
    def describe(
        cls, record: DeploymentRecord, instances: list[Any], endpoints: list[str]
    ) -> Deployment:
        """The record with its instances' health (``Orchestrator.health``) and endpoints."""
        fields = {name: getattr(record, name) for name in _DeploymentFields.model_fields}
        return cls(**fields, instances=instances, endpoints=endpoints)


class DeploymentList(Document):
    """``GET /api/v1/deployments``: by model, then version."""

    deployments: list[Deployment] = Field(description="Every deployment.")


class OperationMarker(Document):
    """``control/operation.<name>.<version>``: a deploy, scale or undeploy is running there."""

    replica: str = Field(description="The control-plane replica running it (its candidate id).")
    operation: str = Field(description="deploy, scale or undeploy.")
    started: float = Field(0.0, description="When it started (Unix seconds).")


# -- jobs -----------------------------------------------------------------------------------------

JobState = Literal["pending", "running", "succeeded", "failed"]


class JobError(Document):
    """Why a job failed, in the shape of the API's error answers."""

    error: str = Field(description="What went wrong.")
    detail: dict[str, Any] = Field(
        default_factory=dict, description="Structured context (a failed instance's log lines)."
    )


class JobResult(Document):
    """What a job produced: the deployment (deploy, scale) and the optimizer's report (blade)."""

    deployment: Deployment | None = Field(None, description="The deployment after the job.")
    report: dict[str, Any] | None = Field(
        None, description="The blade optimizer's report (also when it chose to serve plain)."
    )


class JobInfo(Document):
    """``GET /api/v1/jobs/{id}``: a job's state and what it reported."""

    id: str = Field(description="The job's id.")
    kind: str = Field(description="deploy or scale.")
    title: str = Field(description="What it does, in words.")
    state: JobState = Field(description="pending, running, succeeded or failed.")
    progress: float = Field(ge=0, le=1, description="How far it got, 0 to 1.")
    step: str = Field(description="The current (or last) step.")
    log: list[str] = Field(description="Its last lines of log, oldest first.")
    result: JobResult | None = Field(description="What it produced (when it succeeded).")
    error: JobError | None = Field(description="Why it failed.")
    created: float = Field(description="When it was submitted (Unix seconds).")
    finished: float | None = Field(description="When it ended.")


class JobAccepted(Document):
    """A 202 answer: poll ``GET /api/v1/jobs/{job}``."""

    job: str = Field(description="The job's id.")


# -- the rest of the API --------------------------------------------------------------------------


class Health(Document):
    """``GET /healthz``."""

    status: Literal["ok"] = Field(description="ok: the process serves.")
    replica: str = Field(description="This replica's candidate id in the leader election.")
    leader: bool = Field(description="Whether this replica leads (reconciles).")
    leader_url: str | None = Field(description="The leader's URL, if one is elected.")
    store: str = Field(description="The store's state: connected, suspended, connecting, closed.")
    reconcile_passes: int = Field(description="Reconciliation passes this replica ran.")


class TargetGroup(Document):
    """One Prometheus HTTP service-discovery target group: a deployment's instances, or a
    pool's (each scraped once, whatever it hosts)."""

    targets: list[str] = Field(description="host:port of each registered instance.")
    labels: dict[str, str] = Field(
        description="model, version, processor, service and __metrics_path__; a pool's: pool, "
        "processor (repository), service and __metrics_path__."
    )


class ErrorAnswer(Document):
    """Every refusal of the control plane: 4xx and 5xx alike."""

    error: str = Field(description="What was wrong, in one line.")
    detail: dict[str, Any] = Field(
        default_factory=dict, description="Structured context for machine readers."
    )
