"""A model's route table: the published JSON document, validated into frozen values.

The control plane publishes one document per model (``/config/models/{name}``, see
ARCHITECTURE.md "Route table"); the SDK parses it once per revision, off the call path, and builds
a ``RouteSelector`` from it. Everything the selector and the client rely on is checked here, so
that a bad publish fails loudly with the field at fault (``InvalidRouteTable``) instead of
misrouting traffic:

- ``schema_version`` is 1; ``model`` is a non-empty string (and the expected one, when given);
  ``revision`` is a non-negative integer (the store item's revision, when given, wins);
- ``routes`` is a non-empty list; versions are unique non-empty strings; weights are non-negative
  integers, at least one positive; ``service`` and ``processor`` are non-empty strings;
- ``blade``: ``engine`` a non-empty string; ``profiles`` maps a dimension name to ``[lo, hi]``
  with ``1 <= lo <= hi``, or to null; ``fallback_version`` names another route and fallbacks do not
  loop; ``report_sha256`` is 64 hex digits;
- ``sticky_key`` is null or a non-empty string;
- ``shadow`` is null or ``{"version", "ratio"}`` with ``0 <= ratio <= 1``. The shadow version is
  served either by a route of ``routes`` with weight 0 (it takes no primary traffic), or by a
  ``service`` (with ``processor`` and optionally ``blade``) inside the shadow object itself; not
  both. Either way ``Shadow.route`` is a ``Route`` of weight 0, and ``RouteTable.route`` finds it.
- ``signature`` is null/absent (no input check) or ``{"inputs": [...], "outputs": [...]}`` of
  ``{"name", "datatype", "shape"}``: unique names, OIP datatypes, dims ``-1`` (dynamic) or ``>= 0``.

Keys this module does not know are ignored, so that additive fields can be published before every
SDK knows them; each route's own JSON object stays readable as ``Route.raw``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NoReturn

import numpy as np
import orjson

from eas_client import DATATYPES

from ._errors import InvalidRouteTable, VersionNotFound

__all__ = [
    "BladeMeta",
    "Route",
    "RouteTable",
    "Shadow",
    "Signature",
    "TensorSpec",
    "parse_route_table",
]

SCHEMA_VERSION = 1
"""The only ``schema_version`` this SDK reads."""

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output of a model's signature.

    Attributes:
        name: the tensor's name.
        datatype: its OIP datatype (``"INT64"``, ``"FP32"``, ``"BYTES"``, ...).
        shape: its dims; ``-1`` is a dynamic dim.
        dtype: the numpy dtype of ``datatype`` (derived).
        fixed_dims: ``(axis, size)`` of every dim that is not dynamic (derived).

    Raises:
        ValueError: ``datatype`` is not an OIP datatype.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    # Derived once here, so that checking a call's inputs is identity and length comparisons.
    dtype: np.dtype[Any] = field(init=False, repr=False, compare=False)
    fixed_dims: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            dtype = DATATYPES[self.datatype]
        except KeyError:
            raise ValueError(
                f"unknown datatype {self.datatype!r}; expected one of {', '.join(DATATYPES)}"
            ) from None
        object.__setattr__(self, "dtype", dtype)
        fixed = tuple((axis, size) for axis, size in enumerate(self.shape) if size != -1)
        object.__setattr__(self, "fixed_dims", fixed)


@dataclass(frozen=True, slots=True)
class Signature:
    """The tensors a model takes and returns. Empty ``inputs`` means: do not check inputs."""

    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class BladeMeta:
    """What the optimizer recorded about a blade-optimized route.

    Attributes:
        engine: the artifact's engine, such as ``"ort-cpu-int8"``.
        profiles: dimension name -> the ``(lo, hi)`` range the engine was built for, or ``None``
            where unbounded; ``"batch"`` and ``"seq"`` are always present.
        fallback_version: the version to call when a request falls outside ``profiles`` or the
            engine fails, or ``None``.
        report_sha256: the SHA-256 (lowercase hex) of the optimizer's verification report, or
            ``None``.
    """

    engine: str
    profiles: Mapping[str, tuple[int, int] | None] = field(hash=False)
    fallback_version: str | None = None
    report_sha256: str | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """One version of a model and where it is served.

    Attributes:
        version: the model version.
        weight: its share of unpinned traffic, relative to the other routes' weights (0: none).
        service: the serving service's name, resolved by the transport's discovery.
        processor: the processor the service runs (``"onnx"``, ``"blade"``, ...).
        blade: the optimizer's record, for blade routes.
        raw: the route's JSON object as published (read-only), for fields this SDK does not read.
    """

    version: str
    weight: int
    service: str
    processor: str
    blade: BladeMeta | None = None
    raw: Mapping[str, Any] = field(default_factory=_empty, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Shadow:
    """Mirror a fraction of calls to another version, to compare its outputs.

    Attributes:
        version: the shadow version.
        ratio: the fraction of calls mirrored, in ``[0, 1]``.
        route: where the shadow version is served (weight 0).
    """

    version: str
    ratio: float
    route: Route


@dataclass(frozen=True, slots=True)
class RouteTable:
    """A model's validated route table at one revision; build it with ``parse_route_table``.

    Attributes:
        model: the model's name.
        revision: the revision of the store item it came from.
        routes: the routes, in published order.
        sticky_key: what a call's ``key=`` names (such as ``"user_id"``) when the same key must
            always reach the same version; ``None``: keys are ignored.
        shadow: the shadow configuration, or ``None``.
        signature: the model's inputs and outputs.
        schema_version: the document's schema version.
    """

    model: str
    revision: int
    routes: tuple[Route, ...]
    sticky_key: str | None = None
    shadow: Shadow | None = None
    signature: Signature = Signature()
    schema_version: int = SCHEMA_VERSION
    _by_version: Mapping[str, Route] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_version = {r.version: r for r in self.routes}
        if self.shadow is not None:
            by_version.setdefault(self.shadow.version, self.shadow.route)
        object.__setattr__(self, "_by_version", MappingProxyType(by_version))

    @property
    def versions(self) -> tuple[str, ...]:
        """Every version the table can route to: the routes', then an inline shadow's."""
        return tuple(self._by_version)

    def route(self, version: str) -> Route:
        """The route of a version (pinning a call to it).

        Raises:
            VersionNotFound: the table has no such version; the error lists the ones it has.
        """
        try:
            return self._by_version[version]
        except KeyError:
            raise VersionNotFound(self.model, version, self.versions) from None


def parse_route_table(
    content: bytes, *, revision: int | None = None, model: str | None = None
) -> RouteTable:
    """Parse and validate a published route table document.

    Args:
        content: the document, JSON (UTF-8).
        revision: the store item's revision; when given it wins over the document's ``revision``
            (the store's counter is the one every reader agrees on).
        model: the model the document is published under; when given, the document's ``model``
            must match it.

    Returns:
        The route table.

    Raises:
        InvalidRouteTable: the document cannot be used; the error names the field and why.
    """
    try:
        doc = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise InvalidRouteTable(
            "(document)", f"not valid JSON: {exc}", model=model, revision=revision
        ) from None
    return _Parser(model, revision).table(doc)


class _Parser:
    """Walks one document; ``fail`` raises with the model and revision learnt so far."""

    def __init__(self, model: str | None, revision: int | None):
        self.model = model
        self.revision = revision

    def fail(self, where: str, reason: str) -> NoReturn:
        raise InvalidRouteTable(where, reason, model=self.model, revision=self.revision)

    # -- typed readers ---------------------------------------------------------------------------

    def obj(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(where, f"must be an object, got {_json_type(value)}")
        return value

    def text(self, parent: dict[str, Any], key: str, where: str) -> str:
        if key not in parent:
            self.fail(where, "missing (a non-empty string)")
        value = parent[key]
        if not isinstance(value, str) or not value:
            self.fail(where, f"must be a non-empty string, got {_shown(value)}")
        return value

    def optional_text(self, parent: dict[str, Any], key: str, where: str) -> str | None:
        return None if parent.get(key) is None else self.text(parent, key, where)

    def integer(self, parent: dict[str, Any], key: str, where: str, *, minimum: int) -> int:
        if key not in parent:
            self.fail(where, f"missing (an integer >= {minimum})")
        value = parent[key]
        if not _is_int(value) or value < minimum:
            self.fail(where, f"must be an integer >= {minimum}, got {_shown(value)}")
        return int(value)

    # -- sections --------------------------------------------------------------------------------

    def table(self, value: Any) -> RouteTable:
        doc = self.obj(value, "(document)")
        schema = doc.get("schema_version")
        if not _is_int(schema) or schema != SCHEMA_VERSION:
            got = "missing" if "schema_version" not in doc else f"got {_shown(schema)}"
            self.fail("schema_version", f"must be {SCHEMA_VERSION}, {got}")
        name = self.text(doc, "model", "model")
        if self.model is not None and name != self.model:
            self.fail("model", f"the document is for model {name!r}, published as {self.model!r}")
        self.model = name
        if self.revision is None:
            self.revision = self.integer(doc, "revision", "revision", minimum=0)
        elif doc.get("revision") is not None:
            self.integer(doc, "revision", "revision", minimum=0)  # checked, but the store's wins

        routes = self.routes(doc.get("routes"))
        sticky_key = self.optional_text(doc, "sticky_key", "sticky_key")
        shadow = self.shadow(doc.get("shadow"), routes)
        self.fallbacks(routes, shadow)
        return RouteTable(
            model=name,
            revision=self.revision,
            routes=routes,
            sticky_key=sticky_key,
            shadow=shadow,
            signature=self.signature(doc.get("signature")),
            schema_version=SCHEMA_VERSION,
        )

    def routes(self, value: Any) -> tuple[Route, ...]:
        if not isinstance(value, list) or not value:
            self.fail("routes", f"must be a non-empty list of routes, got {_shown(value)}")
        routes: list[Route] = []
        seen: set[str] = set()
        for i, item in enumerate(value):
            where = f"routes[{i}]"
            route = self.route(self.obj(item, where), where, weight=True)
            if route.version in seen:
                self.fail(f"{where}.version", f"duplicate version {route.version!r}")
            seen.add(route.version)
            routes.append(route)
        if not any(r.weight > 0 for r in routes):
            self.fail("routes", "no route has a weight > 0: no version could take traffic")
        return tuple(routes)

    def route(
        self, item: dict[str, Any], where: str, *, weight: bool, version: str | None = None
    ) -> Route:
        if version is None:
            version = self.text(item, "version", f"{where}.version")
        if weight:
            w = self.integer(item, "weight", f"{where}.weight", minimum=0)
        elif item.get("weight", 0) != 0:
            self.fail(f"{where}.weight", "a shadow takes no primary traffic: must be 0 or absent")
        else:
            w = 0
        blade = item.get("blade")
        return Route(
            version=version,
            weight=w,
            service=self.text(item, "service", f"{where}.service"),
            processor=self.text(item, "processor", f"{where}.processor"),
            blade=None if blade is None else self.blade(blade, f"{where}.blade"),
            raw=MappingProxyType(dict(item)),
        )

    def blade(self, value: Any, where: str) -> BladeMeta:
        meta = self.obj(value, where)
        engine = self.text(meta, "engine", f"{where}.engine")
        profiles: dict[str, tuple[int, int] | None] = {"batch": None, "seq": None}
        raw_profiles = meta.get("profiles")
        if raw_profiles is not None:
            for dim, bounds in self.obj(raw_profiles, f"{where}.profiles").items():
                profiles[dim] = self.bounds(bounds, f"{where}.profiles.{dim}")
        sha = self.optional_text(meta, "report_sha256", f"{where}.report_sha256")
        if sha is not None and not _SHA256.fullmatch(sha):
            self.fail(f"{where}.report_sha256", f"must be 64 hex digits, got {sha!r}")
        return BladeMeta(
            engine=engine,
            profiles=MappingProxyType(profiles),
            fallback_version=self.optional_text(
                meta, "fallback_version", f"{where}.fallback_version"
            ),
            report_sha256=None if sha is None else sha.lower(),
        )

    def bounds(self, value: Any, where: str) -> tuple[int, int] | None:
        if value is None:
            return None
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(_is_int(v) for v in value)
            or not 1 <= value[0] <= value[1]
        ):
            self.fail(where, f"must be [lo, hi] with 1 <= lo <= hi, or null; got {_shown(value)}")
        return (int(value[0]), int(value[1]))

    def shadow(self, value: Any, routes: tuple[Route, ...]) -> Shadow | None:
        if value is None:
            return None
        item = self.obj(value, "shadow")
        version = self.text(item, "version", "shadow.version")
        ratio = item.get("ratio")
        if (
            not isinstance(ratio, int | float)
            or isinstance(ratio, bool)
            or not math.isfinite(ratio)
            or not 0 <= ratio <= 1
        ):
            self.fail("shadow.ratio", f"must be a number in [0, 1], got {_shown(ratio)}")
        listed = next((r for r in routes if r.version == version), None)
        if listed is not None:
            if "service" in item:
                self.fail(
                    "shadow.service",
                    f"version {version!r} already has a route in routes; give one or the other",
                )
            if listed.weight != 0:
                self.fail(
                    "shadow.version",
                    f"route {version!r} has weight {listed.weight}; a shadow version takes no "
                    "primary traffic (weight 0)",
                )
            route = listed
        elif "service" in item:
            route = self.route(item, "shadow", weight=False, version=version)
        else:
            self.fail(
                "shadow.version",
                f"version {version!r} has no route: add one with weight 0 to routes, or give "
                "service and processor in shadow",
            )
        return Shadow(version=version, ratio=float(ratio), route=route)

    def fallbacks(self, routes: tuple[Route, ...], shadow: Shadow | None) -> None:
        owners = [(f"routes[{i}]", r) for i, r in enumerate(routes)]
        if shadow is not None and shadow.route not in routes:
            owners.append(("shadow", shadow.route))
        fallback_of = {r.version: _fallback(r) for r in routes}
        for where, route in owners:
            target = _fallback(route)
            if target is not None and target not in fallback_of:
                self.fail(
                    f"{where}.blade.fallback_version",
                    f"{target!r} is not a version of routes: {', '.join(fallback_of)}",
                )
        for where, route in owners:
            chain = [route.version]
            target = _fallback(route)
            while target is not None:
                if target in chain:
                    loop = " -> ".join([*chain, target])
                    self.fail(f"{where}.blade.fallback_version", f"fallbacks loop: {loop}")
                chain.append(target)
                target = fallback_of[target]

    def signature(self, value: Any) -> Signature:
        if value is None:
            return Signature()
        sig = self.obj(value, "signature")
        return Signature(
            inputs=self.tensors(sig.get("inputs"), "signature.inputs"),
            outputs=self.tensors(sig.get("outputs"), "signature.outputs"),
        )

    def tensors(self, value: Any, where: str) -> tuple[TensorSpec, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.fail(where, f"must be a list of tensors, got {_json_type(value)}")
        specs: list[TensorSpec] = []
        for i, item in enumerate(value):
            at = f"{where}[{i}]"
            tensor = self.obj(item, at)
            name = self.text(tensor, "name", f"{at}.name")
            if any(s.name == name for s in specs):
                self.fail(f"{at}.name", f"duplicate tensor name {name!r}")
            datatype = tensor.get("datatype")
            if not isinstance(datatype, str) or datatype not in DATATYPES:
                self.fail(
                    f"{at}.datatype",
                    f"unknown datatype {_shown(datatype)}; expected one of {', '.join(DATATYPES)}",
                )
            shape = tensor.get("shape")
            if not isinstance(shape, list) or not all(_is_int(d) and d >= -1 for d in shape):
                self.fail(
                    f"{at}.shape", f"must be a list of dims (-1 or >= 0), got {_shown(shape)}"
                )
            specs.append(TensorSpec(name, datatype, tuple(int(d) for d in shape)))
        return tuple(specs)


def _fallback(route: Route) -> str | None:
    return None if route.blade is None else route.blade.fallback_version


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    text = orjson.dumps(value).decode() if isinstance(value, dict | list) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
