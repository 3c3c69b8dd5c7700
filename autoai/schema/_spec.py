"""The deploy spec: the EAS-style service JSON users know, as the body of ``POST .../deploy``.

Nested or dotted: EAS's ``{"metadata.instance": 2, "metadata.rpc.max_batch_size": 16}`` is folded
into ``{"metadata": {"instance": 2, "rpc": {"max_batch_size": 16}}}`` before validation (a key
given both ways is refused). Every refusal says which field, what it got and what it expects,
in the words the control plane used before these models (``metadata.instance is 0, expected an
integer from 1 to 16``).

Unknown keys are refused at every level (a misspelt ``"instances": 2`` would otherwise deploy one
instance without a word), except ``name`` and ``model_path``: an EAS service JSON carries them, and
here the route names the model and the repository holds its file, so they are accepted and
dropped. ``token`` is a secret: it goes to the instances' service JSON and nowhere else (never
into a dump of the spec, hence never into the deployment record or an answer).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    SerializerFunctionWrapHandler,
    StrictBool,
    StrictStr,
    Tag,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ._base import Request
from ._dotted import fold_dotted, refuse as _refuse

__all__ = [
    "BLADE_OPTIONS",
    "DEFAULT_POOL_INSTANCES",
    "MAX_INSTANCES",
    "POOL_NAME",
    "BladeOptions",
    "DeployMetadata",
    "DeploySpec",
    "PaddedInput",
    "PaddingSpec",
    "RpcOptions",
    "ScaleMetadata",
    "ScaleRequest",
    "fold_dotted",
]

MAX_INSTANCES: Final = 16
"""The most instances one deployment may ask for (``metadata.instance``)."""
DEFAULT_POOL_INSTANCES: Final = 2
"""The size of a pool created by a deploy that names it without ``metadata.pool_instances``."""
POOL_NAME: Final = re.compile(r"^[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?$")
"""A pool's name: a DNS label that starts with a letter, so its service ``pool-NAME`` is never a
model version's ``name-version`` (versions are numbers)."""
BLADE_OPTIONS: Final = frozenset(
    {
        "device",
        "level",
        "tolerance",
        "test_data",
        "batch_sizes",
        "seq",
        "eval_set",
        "task_tolerance",
        "required",
    }
)
"""The keys of a ``blade`` options object (``blade_aspect`` passes all but ``required`` to
``blade.optimize``)."""
_PROCESSORS: Final = ("onnx", "blade", "pipeline")
_QUANTITY: Final = re.compile(r"^(?=[0-9.]*[1-9])[0-9]+(?:\.[0-9]+)?(?:Ki|Mi|Gi|Ti|k|M|G|T)?$")
"""A Kubernetes quantity above zero (``4Gi``, ``1.5G``, ``512Mi``)."""


def _whole(value: object) -> object:
    """A JSON number without a fraction (``2.0``, which JSON Schema calls an integer) as an int;
    anything else (a boolean above all) as it is."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _integer(path: str, low: int, high: int | None = None) -> BeforeValidator:
    """An integer (never a JSON bool) in ``[low, high]``, refused as ``path is X, expected ...``."""
    wanted = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"

    def check(given: object) -> object:
        value = _whole(given)
        if value is None or (
            isinstance(value, int)
            and not isinstance(value, bool)
            and low <= value
            and (high is None or value <= high)
        ):
            return value
        raise _refuse(f"{path} is {given!r}, expected {wanted}")

    return BeforeValidator(check)


def _pool_name(value: object) -> object:
    if value is None or (isinstance(value, str) and POOL_NAME.match(value)):
        return value
    raise _refuse(
        f"metadata.pool is {value!r}, expected a pool name: 1-63 of a-z, 0-9 and '-', starting "
        "with a letter and ending with a letter or digit"
    )


def _points(value: object) -> object:
    """``blade.task_tolerance``: a JSON number (never a bool) from 0 to 100."""
    if value is None or (
        isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 100
    ):
        return value
    raise _refuse(
        f"blade.task_tolerance is {value!r}, expected points of the task metric from 0 to 100 "
        "(0.5 = at most 0.005 of accuracy lost)"
    )


def _flag(path: str) -> BeforeValidator:
    def check(value: object) -> object:
        if value is not None and not isinstance(value, bool):
            raise _refuse(f"{path} is {value!r}, expected true or false")
        return value

    return BeforeValidator(check)


def _milliseconds(path: str) -> BeforeValidator:
    def check(value: object) -> object:
        if value is None or (
            isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
        ):
            return value
        raise _refuse(f"{path} is {value!r}, expected a number of milliseconds >= 0")

    return BeforeValidator(check)


def _memory(given: object) -> object:
    value = _whole(given)
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return value
    if isinstance(value, str) and _QUANTITY.match(value):
        return value
    raise _refuse(
        f"metadata.memory is {value!r}, expected MB (an integer > 0) or a quantity like '4Gi'"
    )


def _port_error(value: object) -> PydanticCustomError:
    return _refuse(
        f"metadata.port is {value!r}, expected 0 (any free port) or a port from 1024 "
        "(instance i listens on port + i)"
    )


def _port(given: object) -> object:
    value = _whole(given)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535:
        return value
    raise _port_error(given)


def _flag_or_object(value: Any) -> str:
    """Which member of ``bool | options`` a value is meant for (one error, not one per member)."""
    return "flag" if isinstance(value, bool) else "object"


def _given_only(self: BaseModel, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
    """The fields a spec was given, and only those: a stored or echoed spec reads as it was sent
    (folded), not padded with every default and null."""
    return {k: v for k, v in handler(self).items() if k in self.model_fields_set}


# pydantic takes a serializer's return annotation for the serialized form's JSON schema (a
# ``dict`` would hide every field from OpenAPI); without one, the schema stays the model's.
del _given_only.__annotations__["return"]


class _Given(Request):
    """A part of the deploy spec: dumped as given (``model_fields_set``)."""

    _as_given = model_serializer(mode="wrap")(_given_only)


class RpcOptions(_Given):
    """``metadata.rpc``: how each eas-server instance batches and serves (eas-server's own
    defaults apply to what is left out)."""

    batching: Annotated[bool | None, _flag("metadata.rpc.batching")] = Field(
        None, description="Dynamic batching on or off (eas-server default: on)."
    )
    max_batch_size: Annotated[int | None, _integer("metadata.rpc.max_batch_size", 1)] = Field(
        None, ge=1, description="Most rows per runtime call (eas-server default: 32)."
    )
    max_batch_timeout: Annotated[float | None, _milliseconds("metadata.rpc.max_batch_timeout")] = (
        Field(
            None,
            ge=0,
            description="Longest wait for a batch to fill, in milliseconds, measured from the "
            "oldest queued request (eas-server default: 5).",
        )
    )
    max_queue_size: Annotated[int | None, _integer("metadata.rpc.max_queue_size", 1)] = Field(
        None, ge=1, description="Queued requests beyond which calls get 503 (default: 256)."
    )
    worker_threads: Annotated[int | None, _integer("metadata.rpc.worker_threads", 1)] = Field(
        None, ge=1, description="Runtime sessions run in parallel per instance (default: 1)."
    )
    frontends: Annotated[int | None, _integer("metadata.rpc.frontends", 0)] = Field(
        None,
        ge=0,
        description="HTTP front-end processes per instance feeding one executor (0: eas-server "
        "decides; 1: a single process).",
    )
    grpc_port: Annotated[int | None, _integer("metadata.rpc.grpc_port", 0, 65535)] = Field(
        None,
        ge=0,
        le=65535,
        description="Port of the KServe v2 gRPC front end (0: any free port; absent: no gRPC).",
    )
    keepalive: Annotated[int | None, _integer("metadata.rpc.keepalive", 0)] = Field(
        None, ge=0, description="EAS's keep-alive (ms): accepted for EAS specs, ignored."
    )


class PaddedInput(_Given):
    """One padded input of ``metadata.padding``: its padded axis and the pad value."""

    axis: Annotated[int, _integer("metadata.padding.inputs.*.axis", 1)] = Field(
        ge=1, description="The axis padded to the longest request of a batch (0 is the batch)."
    )
    value: int | float = Field(0, description="The pad value (the pad token id; 0 in a mask).")


class PaddingSpec(_Given):
    """``metadata.padding``: declares that requests of different lengths may be padded into one
    batch (checked by eas-server against the model at load)."""

    inputs: dict[StrictStr, PaddedInput] = Field(
        min_length=1, description="The padded inputs by name."
    )
    outputs: dict[
        StrictStr, Annotated[int, Field(ge=1), _integer("metadata.padding.outputs.*", 1)]
    ] = Field(
        default_factory=dict,
        description="Outputs whose axis follows the padded one, by name: cut back per request.",
    )


class DeployMetadata(_Given):
    """``metadata``: how many instances, where they listen, what each gets."""

    instance: Annotated[int, _integer("metadata.instance", 1, MAX_INSTANCES)] = Field(
        1, ge=1, le=MAX_INSTANCES, description="Instances (processes, or pods) to run."
    )
    port: Annotated[int, BeforeValidator(_port)] = Field(
        0,
        ge=0,
        le=65535,
        json_schema_extra={"not": {"minimum": 1, "maximum": 1023}},
        description="0: each instance picks a free port; else instance i listens on port + i "
        "(from 1024; the local orchestrator only).",
    )
    cpu: Annotated[int | None, _integer("metadata.cpu", 1)] = Field(
        None,
        ge=1,
        description="Cores per instance: the server's intra-op threads unless intra_op_threads "
        "is given; the pod's CPU request and limit on Kubernetes (default 1 there).",
    )
    gpu: Annotated[int | None, _integer("metadata.gpu", 0)] = Field(
        None, ge=0, description="GPUs per instance (honoured by the Kubernetes orchestrator)."
    )
    memory: Annotated[
        Annotated[int, Field(gt=0)]
        | Annotated[str, Field(json_schema_extra={"pattern": _QUANTITY.pattern})]
        | None,
        BeforeValidator(_memory),
    ] = Field(
        None,
        description="Memory per instance: MB (EAS's unit) or a Kubernetes quantity such as "
        "'4Gi' (the Kubernetes orchestrator's request and limit).",
    )
    rpc: RpcOptions | None = Field(None, description="Batching and serving options.")
    workers: Annotated[int | None, _integer("metadata.workers", 1)] = Field(
        None, ge=1, description="Runtime sessions run in parallel (as rpc.worker_threads)."
    )
    worker_threads: Annotated[int | None, _integer("metadata.worker_threads", 1)] = Field(
        None, ge=1, description="As rpc.worker_threads."
    )
    intra_op_threads: Annotated[int | None, _integer("metadata.intra_op_threads", 1)] = Field(
        None, ge=1, description="Threads per runtime session (default: cpu, else eas-server's)."
    )
    padding: (
        Annotated[
            Annotated[StrictBool, Tag("flag")] | Annotated[PaddingSpec, Tag("object")],
            Discriminator(_flag_or_object),
        ]
        | None
    ) = Field(
        None,
        description="A padding declaration, or false to never pad (default: eas-server probes "
        "the model at load).",
    )

    pool: Annotated[str | None, BeforeValidator(_pool_name)] = Field(
        None,
        json_schema_extra={"pattern": POOL_NAME.pattern},
        description="A shared pool of multi-model instances to load this version onto instead "
        "of starting its own (created by the first deploy that names it); instance is then how "
        "many of the pool's instances host it. Absent: exclusive instances (the default).",
    )
    pool_instances: Annotated[int | None, _integer("metadata.pool_instances", 1, MAX_INSTANCES)] = (
        Field(
            None,
            ge=1,
            le=MAX_INSTANCES,
            description="The pool's size when this deploy creates it (default 2); a pool that "
            "exists keeps its size, and another value is refused.",
        )
    )

    @model_validator(mode="after")
    def _port_fits(self) -> DeployMetadata:
        if self.port and not 1024 <= self.port <= 65535 - self.instance:
            raise _port_error(self.port)
        return self

    @model_validator(mode="after")
    def _pool_fits(self) -> DeployMetadata:
        if self.pool is None:
            if self.pool_instances is not None:
                raise _refuse("metadata.pool_instances sizes a pool: it needs metadata.pool")
            return self
        if self.port:
            raise _refuse(
                f"metadata.port is {self.port!r}: a pool's instances pick their own ports, so a "
                "pooled deploy (metadata.pool) takes none"
            )
        if self.pool_instances is not None and self.instance > self.pool_instances:
            raise _refuse(
                f"metadata.instance is {self.instance}, more than the "
                f"{self.pool_instances} instance(s) of pool {self.pool!r} (metadata.pool_instances)"
            )
        return self

    def server(self) -> dict[str, Any]:
        """The keys eas-server reads from its service JSON's ``metadata`` (given ones only);
        ``cpu`` becomes ``intra_op_threads`` unless that is given."""
        keys = {"rpc", "workers", "worker_threads", "intra_op_threads", "padding"}
        out = self.model_dump(mode="json", include=keys, exclude_none=True)
        if self.cpu is not None and self.intra_op_threads is None:
            out["intra_op_threads"] = self.cpu
        return out


class BladeOptions(_Given):
    """``blade`` as an object: the optimizer's options (``blade.optimize``)."""

    device: Literal["cpu", "cuda"] | None = Field(None, description="Where to optimize for.")
    level: Literal["o1", "o2"] | None = Field(
        None, description="o1: lossless passes (fp16 on GPU); o2 (default): also int8."
    )
    tolerance: float | dict[Literal["rel_l2", "cosine", "top1"], float] | None = Field(
        None,
        description="Overrides the accuracy gates: a number is the cosine floor of lossy passes; "
        "an object may set rel_l2, cosine, top1.",
    )
    test_data: StrictStr | None = Field(
        None, description="An .npz of inputs on the control plane's host (default: drawn)."
    )
    batch_sizes: list[Annotated[int, Field(ge=1), _integer("blade.batch_sizes[*]", 1)]] | None = (
        Field(None, min_length=1, description="Batch sizes to time (default 1, 8, 32).")
    )
    seq: Annotated[int | None, _integer("blade.seq", 1)] = Field(
        None, ge=1, description="Sequence length of drawn test data (default 128)."
    )
    eval_set: StrictStr | None = Field(
        None,
        description="Pipeline bundles: a JSONL file of labelled examples on the control plane's "
        "host; every lossy pass is then also judged by the task metric (accuracy, or slot F1).",
    )
    task_tolerance: Annotated[float | None, BeforeValidator(_points)] = Field(
        None,
        description="Points of the task metric a lossy pass may lose against the fp32 model "
        "(default 0.5, i.e. 0.005 of accuracy).",
    )
    required: Annotated[bool, _flag("blade.required")] = Field(
        False, description="Fail the deploy rather than serve plain when no candidate wins."
    )

    @model_validator(mode="before")
    @classmethod
    def _known(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            unknown = sorted(str(k) for k in set(data) - BLADE_OPTIONS)
            if unknown:
                raise _refuse(
                    f"unknown blade option(s) {unknown}, expected some of {sorted(BLADE_OPTIONS)}"
                )
        return data


class DeploySpec(_Given):
    """The body of ``POST /api/v1/models/{name}/versions/{version}/deploy``: an EAS-style
    service spec. Keys may also be given dotted, as EAS writes them (``"metadata.instance": 2``,
    ``"metadata.rpc.max_batch_size": 16``): they are folded into this nested form first."""

    # processor "onnx" with blade asked for is a contradiction: said in the schema too
    model_config = ConfigDict(
        json_schema_extra={
            "not": {
                "required": ["processor", "blade"],
                "properties": {"processor": {"const": "onnx"}, "blade": {"not": {"const": False}}},
            }
        }
    )

    processor: Literal["onnx", "blade", "pipeline"] | None = Field(
        None,
        description="onnx: served as registered; blade: optimized (as blade: true); pipeline: "
        "a bundle (text in, labels out; the default for bundles, optimized with blade: true).",
    )
    blade: Annotated[
        Annotated[StrictBool, Tag("flag")] | Annotated[BladeOptions, Tag("object")],
        Discriminator(_flag_or_object),
    ] = Field(
        False,
        description="Optimize with blade (true, or the optimizer's options); a model no "
        "candidate improves is served plain unless blade.required.",
    )
    metadata: DeployMetadata = Field(
        default_factory=DeployMetadata, description="Instances, ports, resources, rpc."
    )
    token: SecretStr | None = Field(
        None,
        exclude=True,
        description="The token the instances require of callers; never stored or echoed.",
    )
    name: StrictStr | None = Field(
        None, exclude=True, description="EAS's service name: ignored (the path names the model)."
    )
    model_path: StrictStr | None = Field(
        None,
        exclude=True,
        description="EAS's model location: ignored (the repository holds the version's file).",
    )

    @model_validator(mode="before")
    @classmethod
    def _eas_form(cls, data: Any) -> Any:
        """Dotted keys folded; ``processor`` and ``blade`` checked together, with the messages
        ``blade_aspect.wants_blade`` gives."""
        if not isinstance(data, Mapping):
            return data
        data = fold_dotted(data)
        for ignored in ("name", "model_path"):  # EAS's; the route and the repository decide
            data.pop(ignored, None)
        if data.get("metadata", {}) is None:
            del data["metadata"]
        metadata = data.get("metadata", {})
        if not isinstance(metadata, Mapping | DeployMetadata):
            raise _refuse(f"metadata must be an object, got {metadata!r}")
        processor, blade = data.get("processor"), data.get("blade", False)
        if processor is not None and processor not in _PROCESSORS:
            raise _refuse(
                f"processor is {processor!r}, expected 'onnx' or 'blade' (or blade: true); "
                "'pipeline' for a bundle"
            )
        if not isinstance(blade, bool | Mapping | BladeOptions):
            raise _refuse(f"blade is {blade!r}, expected true, false or an options object")
        if processor == "onnx" and blade is not False:
            raise _refuse("processor 'onnx' contradicts blade: pick one")
        return data

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None

    def aspect(self) -> dict[str, Any]:
        """The spec as ``blade_aspect.on_deploy`` reads it (given values only, no token)."""
        return self.model_dump(mode="json", exclude_none=True)

    def stored(self) -> DeploySpec:
        """This spec without its token (what a deployment record keeps)."""
        return self.model_copy(update={"token": None})


class ScaleMetadata(Request):
    """``metadata`` of a scale request: only ``instance`` may change on a running deployment."""

    instance: Annotated[int, _integer("metadata.instance", 1, MAX_INSTANCES)] = Field(
        ge=1, le=MAX_INSTANCES, description="The new number of instances."
    )

    @model_validator(mode="before")
    @classmethod
    def _only_instance(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and set(data) - {"instance"}:
            raise _refuse(
                f"only metadata.instance can change on a running deployment, got {sorted(data)}"
            )
        return data


class ScaleRequest(Request):
    """The body of ``PATCH .../deployment``: ``{"metadata": {"instance": N}}`` (or, dotted as
    EAS writes it, ``{"metadata.instance": N}``)."""

    metadata: ScaleMetadata

    @model_validator(mode="before")
    @classmethod
    def _eas_form(cls, data: Any) -> Any:
        return fold_dotted(data) if isinstance(data, Mapping) else data
