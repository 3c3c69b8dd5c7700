"""The route table and its parts, with every rule a reader relies on.

The control plane publishes one ``RouteTable`` per model (``/config/models/{name}``, see
ARCHITECTURE.md "Route table"); ``blade_aspect.on_publish`` builds its entries; the SDK parses each
new revision with the same model, once, off the call path. Every rule the selector and the clients
rely on is checked at construction, so that the writer cannot publish what a reader would refuse:

- ``schema_version`` is 1 (checked before anything else: a newer document is refused as such);
  ``model`` is a non-empty string; ``revision`` an integer ``>= 0`` (a reader may pass the store's
  revision in the validation context as ``{"revision": n}``; it fills a missing one);
- ``routes`` is non-empty, versions are unique non-empty strings, weights integers ``>= 0`` with at
  least one positive; ``service`` and ``processor`` are non-empty strings;
- ``blade``: ``engine`` non-empty; ``profiles`` maps a dimension to ``[lo, hi]`` with
  ``1 <= lo <= hi``, or to null (``batch`` and ``seq`` always present); ``fallback_version`` names
  another route and fallbacks do not loop; ``report_sha256`` is 64 hex digits (kept lowercase);
- ``sticky_key`` is null or a non-empty string;
- ``shadow`` is null or ``{"version", "ratio"}`` with ``0 <= ratio <= 1``; its version is served
  either by a route of ``routes`` with weight 0, or by a ``service`` (with ``processor``, optionally
  ``blade``, and no weight but 0) inside the shadow itself; not both. Either way ``Shadow.route``
  is a route entry of weight 0, and ``RouteTable.route`` finds it;
- ``signature`` is null (no input check) or ``{"inputs", "outputs"}`` of ``{"name", "datatype",
  "shape"}``: unique names, OIP datatypes, dims ``-1`` (dynamic) or ``>= 0``;
- ``labels`` is null or the label set of the versions (non-empty strings); ``label_change`` a
  boolean (false when absent).

Fields a model does not know are ignored (``Document``), so additive fields can be published before
every SDK knows them. JSON integers never come from booleans or strings (strict types).
``describe_error`` (``_checks``) turns a ``ValidationError`` into a field path
(``routes[0].weight``) and a one-line reason, for the SDK's ``InvalidRouteTable`` and the control
plane's ``InvalidRequest``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Annotated, Any, Literal, overload

import numpy as np
from pydantic import (
    AfterValidator,
    Field,
    PrivateAttr,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from eas_client import DATATYPES

from ._base import Document
from ._checks import Text, refuse

__all__ = [
    "SCHEMA_VERSION",
    "BladeMeta",
    "RouteEntry",
    "RouteTable",
    "Shadow",
    "Signature",
    "TensorSpec",
]

SCHEMA_VERSION: Literal[1] = 1
"""The route-table schema this code writes and reads."""

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def _bounds(value: tuple[int, int] | None) -> tuple[int, int] | None:
    if value is not None and not 1 <= value[0] <= value[1]:
        raise refuse(f"must be [lo, hi] with 1 <= lo <= hi, or null; got {list(value)}")
    return value


Bounds = Annotated[tuple[StrictInt, StrictInt] | None, AfterValidator(_bounds)]


# -- signature --------------------------------------------------------------------------------


class TensorSpec(Document):
    """One input or output of a model's signature.

    ``TensorSpec("x", "FP32", (-1, 4))`` and keywords both build one. ``dtype`` and ``fixed_dims``
    are derived once, so that checking a call's inputs is identity and length comparisons.
    """

    name: Text = Field(description="The tensor's name.")
    datatype: StrictStr = Field(
        description="Its Open Inference Protocol datatype.",
        json_schema_extra={"enum": list(DATATYPES)},
    )
    shape: tuple[Annotated[StrictInt, Field(ge=-1)], ...] = Field(
        description="Its dims; -1 is a dynamic dim."
    )

    @overload
    def __init__(self, name: str, datatype: str, shape: Sequence[int], /) -> None: ...
    @overload
    def __init__(self, *, name: str, datatype: str, shape: Sequence[int]) -> None: ...
    def __init__(self, *args: Any, **data: Any) -> None:
        super().__init__(**dict(zip(("name", "datatype", "shape"), args, strict=False)), **data)

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, value: str) -> str:
        if value not in DATATYPES:
            raise refuse(f"unknown datatype {value!r}; expected one of {', '.join(DATATYPES)}")
        return value

    @cached_property
    def dtype(self) -> np.dtype[Any]:
        """The numpy dtype of ``datatype``."""
        return DATATYPES[self.datatype]

    @cached_property
    def fixed_dims(self) -> tuple[tuple[int, int], ...]:
        """``(axis, size)`` of every dim that is not dynamic."""
        return tuple((axis, size) for axis, size in enumerate(self.shape) if size != -1)

    def model_post_init(self, context: Any, /) -> None:
        self.dtype  # noqa: B018  (computed now, off the call path)
        self.fixed_dims  # noqa: B018


def _unique_names(specs: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        if spec.name in seen:
            raise refuse(f"duplicate tensor name {spec.name!r}", f"[{i}].name")
        seen.add(spec.name)
    return specs


Tensors = Annotated[tuple[TensorSpec, ...], AfterValidator(_unique_names)]


def _none_is_empty(value: Any) -> Any:
    return () if value is None else value


class Signature(Document):
    """The tensors a model takes and returns. Empty ``inputs`` means: do not check inputs.

    ``Signature((spec, ...))`` and keywords both build one.
    """

    inputs: Tensors = Field(default=(), description="The inputs (unique names).")
    outputs: Tensors = Field(default=(), description="The outputs (unique names).")

    @overload
    def __init__(
        self, inputs: Sequence[TensorSpec] = ..., outputs: Sequence[TensorSpec] = ..., /
    ) -> None: ...
    @overload
    def __init__(
        self, *, inputs: Sequence[TensorSpec] = ..., outputs: Sequence[TensorSpec] = ...
    ) -> None: ...
    def __init__(self, *args: Any, **data: Any) -> None:
        super().__init__(**dict(zip(("inputs", "outputs"), args, strict=False)), **data)

    @field_validator("inputs", "outputs", mode="before")
    @classmethod
    def _null_is_none(cls, value: Any) -> Any:
        return _none_is_empty(value)

    @cached_property
    def input_checks(
        self,
    ) -> tuple[tuple[str, np.dtype[Any], int, tuple[tuple[int, int], ...]], ...]:
        """``(name, dtype, rank, fixed_dims)`` of every input as plain tuples: what a call's
        input check reads, without an attribute lookup per input."""
        return tuple((t.name, t.dtype, len(t.shape), t.fixed_dims) for t in self.inputs)

    def model_post_init(self, context: Any, /) -> None:
        self.input_checks  # noqa: B018  (computed now, off the call path)


# -- routes -----------------------------------------------------------------------------------


class BladeMeta(Document):
    """What the optimizer recorded about a blade-optimized route."""

    engine: Text = Field(description='The artifact\'s engine, such as "ort-cpu-int8".')
    profiles: dict[str, Bounds] = Field(
        default_factory=lambda: dict.fromkeys(("batch", "seq")),
        description="Dimension name -> the [lo, hi] range the engine was built for (1 <= lo <= "
        "hi), or null where unbounded; batch and seq are always present.",
    )
    fallback_version: Text | None = Field(
        default=None,
        description="The version to call when a request falls outside profiles or the engine "
        "fails; another route of the table.",
    )
    report_sha256: Text | None = Field(
        default=None,
        description="SHA-256 (64 hex digits, lowercase) of the optimizer's verification report.",
    )
    speedup: StrictFloat | None = Field(
        default=None,
        description="The optimizer's measured speedup over the plain model, as recorded at deploy.",
    )

    @field_validator("profiles", mode="before")
    @classmethod
    def _null_profiles(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("profiles")
    @classmethod
    def _batch_and_seq(cls, value: dict[str, tuple[int, int] | None]) -> Any:
        return {"batch": None, "seq": None, **value}

    @field_validator("report_sha256")
    @classmethod
    def _sha256(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not _SHA256.fullmatch(value):
            raise refuse(f"must be 64 hex digits, got {value!r}")
        return value.lower()

    def __hash__(self) -> int:
        return hash((self.engine, tuple(sorted(self.profiles.items())), self.fallback_version))


class RouteEntry(Document):
    """One version of a model and where it is served (the SDK calls it ``Route``)."""

    version: Text = Field(description="The model version.")
    weight: StrictInt = Field(
        ge=0,
        description="Its share of unpinned traffic, relative to the other routes' (0: none).",
    )
    service: Text = Field(description="The serving service, resolved by instance discovery.")
    processor: Text = Field(description='The processor the service runs ("onnx", "blade", ...).')
    blade: BladeMeta | None = Field(default=None, description="The optimizer's record (blade).")

    @cached_property
    def serving_key(self) -> tuple[str, str, str, str]:
        """What a client of this route is made for: version, service, processor and the blade
        metadata (as canonical JSON); two entries with the same key can share one client."""
        blade = "" if self.blade is None else self.blade.model_dump_json()
        return (self.version, self.service, self.processor, blade)

    def model_post_init(self, context: Any, /) -> None:
        self.serving_key  # noqa: B018  (computed now, off the call path)


class Shadow(Document):
    """Mirror a fraction of calls to another version, to compare its outputs.

    The version is served by a weight-0 route of the table, or by ``service`` (and ``processor``,
    optionally ``blade``) given here; ``route`` is that route either way.
    """

    version: Text = Field(description="The shadow version.")
    ratio: StrictFloat = Field(
        ge=0, le=1, allow_inf_nan=False, description="The fraction of calls mirrored, in [0, 1]."
    )
    service: Text | None = Field(
        default=None, description="The shadow's service, when no route of the table serves it."
    )
    processor: Text | None = Field(
        default=None, description="The processor of that service (required with service)."
    )
    blade: BladeMeta | None = Field(default=None, description="The optimizer's record (blade).")
    _route: RouteEntry | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _no_weight(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "service" in data and data.get("weight", 0) != 0:
            raise refuse("a shadow takes no primary traffic: must be 0 or absent", "weight")
        return data

    @model_validator(mode="after")
    def _inline_route(self) -> Shadow:
        if self.service is not None:
            if self.processor is None:
                raise refuse("missing (a non-empty string, with service)", "processor")
            self._route = RouteEntry(
                version=self.version,
                weight=0,
                service=self.service,
                processor=self.processor,
                blade=self.blade,
            )
        return self

    @property
    def route(self) -> RouteEntry:
        """Where the shadow version is served (weight 0).

        Raises:
            LookupError: the shadow names no service and is not part of a route table.
        """
        if self._route is None:
            raise LookupError(f"shadow version {self.version!r} is not resolved by a route table")
        return self._route


def _fallback(route: RouteEntry) -> str | None:
    return None if route.blade is None else route.blade.fallback_version


class RouteTable(Document):
    """A model's route table at one revision (the content of ``/config/models/{name}``).

    Checked at construction, besides each field: ``schema_version`` first (a newer document is
    refused as such); versions unique and at least one weight > 0; the shadow's version served
    by a weight-0 route or by the shadow's own ``service``, not both; every
    ``blade.fallback_version`` names a route and fallbacks do not loop. ``route(version)``
    finds a route (the shadow's included) by a precomputed map.
    """

    schema_version: Literal[1] = Field(description="The document's schema version (1).")
    model: Text = Field(description="The model's name.")
    revision: StrictInt = Field(
        ge=0, description="The store revision it was published as (the store's counter wins)."
    )
    routes: tuple[RouteEntry, ...] = Field(
        min_length=1,
        description="The routes in published order: unique versions, at least one weight > 0.",
    )
    sticky_key: Text | None = Field(
        default=None,
        description='What a call\'s key names (such as "user_id") when the same key must always '
        "reach the same version; null: keys are ignored.",
    )
    shadow: Shadow | None = Field(default=None, description="The shadow configuration, or null.")
    signature: Signature = Field(
        default_factory=Signature,
        description="The model's inputs and outputs; null or no inputs: calls are not checked.",
    )
    labels: tuple[Text, ...] | None = Field(
        default=None,
        description="The label set every version of the table answers with (bundles of the "
        "classify and slots tasks), sorted; null: the versions have none.",
    )
    label_change: StrictBool = Field(
        default=False,
        description="Whether the publish said a change of the label set from the previous "
        "revision was intended (allow_label_change).",
    )
    published_by: StrictStr | None = Field(default=None, description="Who published it.")
    reason: StrictStr | None = Field(default=None, description="Why, as the publisher said.")
    published_at: StrictFloat | None = Field(
        default=None, description="When, in seconds since the epoch."
    )

    @model_validator(mode="before")
    @classmethod
    def _schema_first(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, Mapping):
            return data
        if "schema_version" not in data:
            raise refuse(
                f"missing: this reader knows schema_version {SCHEMA_VERSION}", "schema_version"
            )
        version = data["schema_version"]
        if type(version) is not int or version != SCHEMA_VERSION:
            raise refuse(
                f"must be {SCHEMA_VERSION}, got {version!r}: a newer schema needs a newer reader",
                "schema_version",
            )
        revision = (info.context or {}).get("revision")
        if revision is not None and data.get("revision") is None:
            data = {**data, "revision": revision}
        return data

    @field_validator("signature", mode="before")
    @classmethod
    def _null_signature(cls, value: Any) -> Any:
        return {} if value is None else value

    @model_validator(mode="after")
    def _cross_fields(self) -> RouteTable:
        seen: set[str] = set()
        for i, route in enumerate(self.routes):
            if route.version in seen:
                raise refuse(f"duplicate version {route.version!r}", f"routes[{i}].version")
            seen.add(route.version)
        if not any(r.weight > 0 for r in self.routes):
            raise refuse("no route has a weight > 0: no version could take traffic", "routes")
        if self.shadow is not None:
            self._place_shadow(self.shadow)
        self._check_fallbacks()
        self._by_version  # noqa: B018  (computed now, off the call path)
        return self

    def _place_shadow(self, shadow: Shadow) -> None:
        version = shadow.version
        listed = next((r for r in self.routes if r.version == version), None)
        if listed is None:
            if shadow.service is None:
                raise refuse(
                    f"version {version!r} has no route: add one with weight 0 to routes, or give "
                    "service and processor in shadow",
                    "shadow.version",
                )
            return
        if shadow.service is not None:
            raise refuse(
                f"version {version!r} already has a route in routes; give one or the other",
                "shadow.service",
            )
        if listed.weight != 0:
            raise refuse(
                f"route {version!r} has weight {listed.weight}; a shadow version takes no "
                "primary traffic (weight 0)",
                "shadow.version",
            )
        shadow._route = listed  # a shadow belongs to the table that resolves it

    def _check_fallbacks(self) -> None:
        owners = [(f"routes[{i}]", r) for i, r in enumerate(self.routes)]
        if self.shadow is not None and self.shadow.service is not None:
            owners.append(("shadow", self.shadow.route))
        fallback_of = {r.version: _fallback(r) for r in self.routes}
        for where, route in owners:
            target = _fallback(route)
            if target is not None and target not in fallback_of:
                raise refuse(
                    f"{target!r} is not a version of routes: {', '.join(fallback_of)}",
                    f"{where}.blade.fallback_version",
                )
        for where, route in owners:
            chain = [route.version]
            target = _fallback(route)
            while target is not None:
                if target in chain:
                    loop = " -> ".join([*chain, target])
                    raise refuse(f"fallbacks loop: {loop}", f"{where}.blade.fallback_version")
                chain.append(target)
                target = fallback_of[target]

    @cached_property
    def _by_version(self) -> Mapping[str, RouteEntry]:
        by_version = {r.version: r for r in self.routes}
        if self.shadow is not None:
            by_version.setdefault(self.shadow.version, self.shadow.route)
        return by_version

    def to_content(self) -> bytes:
        """The bytes to store: JSON without its null fields. Readers take an absent field for
        null; SDKs older than this model did not always take a null for absent (a shadow with
        ``"service": null`` was refused there)."""
        return self.model_dump_json(exclude_none=True).encode()

    @property
    def traffic_versions(self) -> frozenset[str]:
        """The versions calls can reach: the routes with weight > 0 and the shadow's, and the
        fallbacks they chain to (what must stay deployed while this table is published)."""
        starts = [r for r in self.routes if r.weight > 0]
        if self.shadow is not None:
            starts.append(self.shadow.route)
        used: set[str] = set()
        for route in starts:
            while route.version not in used:
                used.add(route.version)
                target = _fallback(route)
                if target is None:
                    break
                route = self._by_version[target]
        return frozenset(used)

    @property
    def versions(self) -> tuple[str, ...]:
        """Every version the table can route to: the routes', then an inline shadow's."""
        return tuple(self._by_version)

    def route(self, version: str) -> RouteEntry:
        """The route of a version (pinning a call to it).

        Raises:
            KeyError: the table has no such version (the SDK's table raises its
                ``VersionNotFound``, which lists the versions).
        """
        return self._by_version[version]
