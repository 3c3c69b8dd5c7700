"""The three join points where a blade route differs from a plain one.

- ``on_deploy``: the control plane hands over a model and an EAS-style service spec; a blade spec
  (``"processor": "blade"`` or ``"blade": true | {options}``) runs ``blade.optimize`` (its artifact
  cache makes a repeat free) and gets the ``blade`` processor and the artifact; a plain spec, or a
  model no blade candidate improves, gets the ``onnx`` processor and the model as it is. A bundle
  (a directory with ``pipeline.json``: text in, labels out) is always served by the ``pipeline``
  processor: plain, the registered bundle; blade, the derived bundle the optimizer writes (its
  model a blade artifact), with the optimizer's record kept.
- ``on_publish``: one published route ``{version, weight}`` plus what its deployment recorded
  becomes a route-table entry, ``autoai.schema.RouteEntry`` (service, processor, and for blade
  the engine, profiles, fallback version, report digest and speedup).
- ``on_call``: the SDK asks which client class serves a route, and with which extra options. A
  ``pipeline`` route, blade-optimized or not, takes the plain client: its server tokenizes and
  pads to the engine's buckets itself, so no profile-aware splitting or fallback is needed.

Nothing else in the project compares a processor to ``"blade"``. ``autoai.schema`` is the one
import from above this layer: the route entry is the shared contract of the control plane, this
package and the SDK (``autoai.schema`` imports nothing else of ``autoai``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from autoai.schema import BLADE_OPTIONS, BladeMeta, PublishRoute, RouteEntry, describe_error

from ._errors import InvalidDeploySpec, InvalidRouteRequest, NotOptimized

__all__ = [
    "BLADE",
    "PIPELINE",
    "PLAIN",
    "DeployPlan",
    "call_options",
    "is_blade",
    "is_bundle",
    "on_call",
    "on_deploy",
    "on_publish",
    "wants_blade",
]

BLADE = "blade"
PLAIN = "onnx"
PIPELINE = "pipeline"
"""The processor of bundles (text in, labels out), plain or blade-optimized."""
_M = TypeVar("_M", bound=BaseModel)
_DEFAULT_MAX_BATCH = 32
_BUNDLE_SPEC = "pipeline.json"  # eas_server.pipeline.BUNDLE_SPEC, without importing tokenizers


class _RouteLike(Protocol):
    @property
    def processor(self) -> str: ...


@dataclass(frozen=True)
class DeployPlan:
    """What to start for a deployment.

    Attributes:
        processor: ``"onnx"``, ``"blade"`` or ``"pipeline"`` (the ``eas-server --processor``).
        model_path: what ``eas-server --model`` gets (the blade artifact directory for blade;
            the bundle directory for pipeline: the derived one when blade optimized it).
        blade: the optimizer's record of a blade deployment (engine, profiles, report digest,
            speedup), which ``on_publish`` puts in its route entries; None for plain.
        report: the optimizer's report when blade was asked for (also when it chose plain).
        reason: one line on why this processor.
    """

    processor: str
    model_path: Path
    blade: BladeMeta | None = None
    report: dict[str, Any] | None = field(default=None, repr=False)
    reason: str = ""


def wants_blade(spec: Mapping[str, Any]) -> bool:
    """Whether an EAS-style service spec asks for the blade optimizer.

    Raises:
        InvalidDeploySpec: ``processor`` and ``blade`` contradict each other, or are of the wrong
            type, or name an unknown processor.
    """
    processor = spec.get("processor")
    blade = spec.get("blade", False)
    if processor is not None and processor not in (PLAIN, BLADE, PIPELINE):
        raise InvalidDeploySpec(
            f"processor is {processor!r}, expected {PLAIN!r} or {BLADE!r} (or blade: true); "
            f"{PIPELINE!r} for a bundle"
        )
    if not isinstance(blade, bool | Mapping):
        raise InvalidDeploySpec(f"blade is {blade!r}, expected true, false or an options object")
    asked = blade is not False
    if processor == PLAIN and asked:
        raise InvalidDeploySpec("processor 'onnx' contradicts blade: pick one")
    wanted = processor == BLADE or asked
    if wanted:
        _blade_options(spec)
    return wanted


def _blade_options(spec: Mapping[str, Any]) -> dict[str, Any]:
    options = spec.get("blade")
    options = dict(options) if isinstance(options, Mapping) else {}
    unknown = sorted(set(options) - BLADE_OPTIONS)
    if unknown:
        raise InvalidDeploySpec(
            f"unknown blade option(s) {unknown}, expected some of {sorted(BLADE_OPTIONS)}"
        )
    if not isinstance(options.get("required", False), bool):
        raise InvalidDeploySpec(
            f"blade.required is {options['required']!r}, expected true or false"
        )
    return options


def _max_batch(spec: Mapping[str, Any]) -> int:
    rpc = (spec.get("metadata") or {}).get("rpc") or {}
    value = rpc.get("max_batch_size", spec.get("max_batch_size", _DEFAULT_MAX_BATCH))
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidDeploySpec(f"rpc.max_batch_size is {value!r}, expected an integer >= 1")
    return value


def _profiles(doc: Mapping[str, Any], max_batch: int) -> dict[str, tuple[int, int] | None]:
    """The shapes the engine serves: any batch up to the server's max batch; the sequence range
    of a TensorRT engine's optimization profile, else no limit (ONNX Runtime takes any length)."""
    seq: tuple[int, int] | None = None
    trt = (doc.get("runtime") or {}).get("trt_options") or {}
    shapes = trt.get("trt_profile_max_shapes")
    if isinstance(shapes, str) and shapes:
        lengths = [int(d.split("x")[1]) for d in shapes.split(",") if d.count("x") >= 1]
        low = trt.get("trt_profile_min_shapes", "")
        lows = [int(d.split("x")[1]) for d in low.split(",") if d.count("x") >= 1] or [1]
        if lengths:
            seq = (max(1, min(lows)), min(lengths))
    return {"batch": (1, max_batch), "seq": seq}


def _engine(doc: Mapping[str, Any]) -> str:
    provider = (doc.get("runtime") or {}).get("provider", "cpu")
    candidate = str(doc.get("candidate", "plain"))
    return candidate if provider == "tensorrt" else f"ort-{provider}-{candidate}"


def is_bundle(model: str | Path) -> bool:
    """Whether a registered model is a bundle: a directory holding ``pipeline.json``."""
    path = Path(model)
    return path.is_dir() and (path / _BUNDLE_SPEC).is_file()


def _served_as(path: Path, spec: Mapping[str, Any]) -> str:
    """The plain processor of a model: ``pipeline`` for a bundle, ``onnx`` for an ONNX file.

    Raises:
        InvalidDeploySpec: the spec's processor does not fit the model.
    """
    processor = spec.get("processor")
    if not is_bundle(path):
        if processor == PIPELINE:
            raise InvalidDeploySpec(
                f"processor {PIPELINE!r} serves bundles (a model with its tokenizer, labels and "
                f"{_BUNDLE_SPEC}); this version is a single ONNX model: use {PLAIN!r} or "
                f"{BLADE!r}"
            )
        return PLAIN
    if processor == PLAIN:
        raise InvalidDeploySpec(
            f"this version is a bundle (text in, labels out), served by the {PIPELINE!r} "
            f"processor: leave processor out or give {PIPELINE!r} (plain), or blade: true"
        )
    return PIPELINE


def _artifact_meta(artifact: Path) -> tuple[dict[str, Any], Path]:
    """The blade artifact's ``blade.json`` and its report's path: in ``artifact`` itself, or in
    the directory a derived bundle's ``pipeline.json`` names as its model."""
    home = artifact
    if not (artifact / "blade.json").is_file() and (artifact / _BUNDLE_SPEC).is_file():
        home = artifact / str(json.loads((artifact / _BUNDLE_SPEC).read_text())["model"])
    report = home / "report.json"
    if not report.is_file():
        report = artifact / "report.json"
    return json.loads((home / "blade.json").read_text()), report


def on_deploy(
    model: str | Path,
    spec: Mapping[str, Any],
    *,
    output_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    progress: bool | Callable[[str, str], None] = False,
    optimize: Callable[..., Any] | None = None,
) -> DeployPlan:
    """Decide what to serve for a deployment, optimizing when the spec asks for blade.

    Args:
        model: the registered ONNX model, or bundle directory.
        spec: the EAS-style service spec (``processor``, ``blade``, ``metadata.rpc``...).
            ``blade`` may be an object of optimizer options: ``device`` (``cpu``/``cuda``),
            ``level``, ``tolerance``, ``test_data`` (npz path), ``batch_sizes``, ``seq``,
            ``eval_set`` and ``task_tolerance`` (bundles: a labelled JSONL set and the points of
            accuracy or slot F1 a lossy pass may lose), and ``required`` (fail rather than
            serve plain when no candidate qualifies).
        output_dir: where the artifact goes (default: next to the model).
        cache_dir: the optimizer's artifact cache.
        progress: passed to the optimizer.
        optimize: the optimizer (default ``blade.optimize``; a job runner may wrap it).

    Returns:
        The plan; for blade, ``report`` is the optimizer's report. When no candidate passed its
        gate and beat the plain model, the plan is plain (processor ``onnx``, or ``pipeline``
        for a bundle) and says why. A bundle's blade plan keeps the ``pipeline`` processor and
        serves the derived bundle, with the optimizer's record in ``blade``.

    Raises:
        InvalidDeploySpec: the spec is malformed, or its processor does not fit the model
            (``pipeline`` for an ONNX file, ``onnx`` for a bundle).
        NotOptimized: ``required`` was set and the optimizer kept the plain model.
        blade.BladeError: the optimizer refused the model or its test data.
    """
    path = Path(model)
    wanted = wants_blade(spec)
    plain = _served_as(path, spec)
    if not wanted:
        return DeployPlan(plain, path, reason="plain deployment asked for")
    options = _blade_options(spec)
    required = options.pop("required", False)
    max_batch = _max_batch(spec)
    if optimize is None:
        from blade import optimize as blade_optimize

        optimize = blade_optimize
    result = optimize(
        path, output_dir=output_dir, cache_dir=cache_dir, progress=progress, **options
    )
    report: dict[str, Any] = dict(result.report)
    if report.get("chosen", "plain") == "plain":
        why = report.get("reason", "no candidate improved on the plain model")
        if required:
            raise NotOptimized(
                f"blade was required, but no candidate passed verification and beat the plain "
                f"model: {why}",
                report,
            )
        return DeployPlan(plain, path, report=report, reason=f"served plain: {why}")
    artifact = Path(result.artifact_dir)
    doc, report_file = _artifact_meta(artifact)
    meta = BladeMeta(
        engine=_engine(doc),
        profiles=_profiles(doc, max_batch),
        report_sha256=hashlib.sha256(report_file.read_bytes()).hexdigest(),
        speedup=round(float(result.speedup), 3),
    )
    return DeployPlan(
        PIPELINE if plain == PIPELINE else BLADE,
        artifact,
        blade=meta,
        report=report,
        reason=f"blade {report['chosen']}: {float(result.speedup):.2f}x faster",
    )


class _Served(Protocol):
    """What ``on_publish`` reads of a deployment (``autoai.schema.Deployment`` or its record)."""

    @property
    def service(self) -> str: ...
    @property
    def processor(self) -> str: ...
    @property
    def blade(self) -> BladeMeta | None: ...


def on_publish(
    route: PublishRoute,
    deployment: _Served,
    *,
    fallback_version: str | None = None,
) -> RouteEntry:
    """The route-table entry of one published route.

    Args:
        route: the publish request's route (``version``, ``weight``; a blade route may name its
            own ``fallback_version``).
        deployment: the deployment of that version: its ``service``, ``processor`` and, for
            blade, ``blade`` (what ``on_deploy`` recorded).
        fallback_version: the plain version a blade route falls back to when the route does not
            name one (the control plane passes the best plain version of the table, if any).

    Returns:
        The entry: version, weight, service, processor, and for blade the optimizer's record
        (engine, profiles, report digest, speedup) with the fallback version.

    Raises:
        InvalidRouteRequest: the deployment records no service or no blade metadata, or a blade
            route falls back to itself.
    """
    version = route.version
    if not deployment.service:
        raise InvalidRouteRequest(f"route {version}: the deployment records no service")
    blade: BladeMeta | None = None
    if deployment.processor == BLADE:
        if deployment.blade is None:
            raise InvalidRouteRequest(f"route {version}: a blade deployment without blade metadata")
        fallback = route.fallback_version or fallback_version
        if fallback == version:
            raise InvalidRouteRequest(f"route {version}: a blade route cannot fall back to itself")
        meta = {**deployment.blade.model_dump(), "fallback_version": fallback}
        blade = _validated(BladeMeta, meta, version, "blade.")
    elif deployment.processor == PIPELINE and deployment.blade is not None:
        # kept for the record (engine, speedup, report); the server pads to its buckets and
        # serves every request itself, so the route has nothing to fall back to
        if route.fallback_version is not None:
            raise InvalidRouteRequest(
                f"route {version}: a pipeline route takes no fallback_version (its server "
                "serves every request, blade-optimized or not)"
            )
        meta = {**deployment.blade.model_dump(), "fallback_version": None}
        blade = _validated(BladeMeta, meta, version, "blade.")
    entry = {"version": version, "weight": route.weight, "service": deployment.service}
    return _validated(
        RouteEntry, {**entry, "processor": deployment.processor, "blade": blade}, version, ""
    )


def _validated(model: type[_M], data: dict[str, object], version: str, at: str) -> _M:
    """``model`` from ``data``, its validation error as ``InvalidRouteRequest`` naming the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        where, reason = describe_error(exc)
        raise InvalidRouteRequest(f"route {version}: {at}{where}: {reason}") from exc


def is_blade(route: _RouteLike) -> bool:
    """Whether a route entry (or a deployment: anything with a ``processor``) is served by a
    blade engine."""
    return route.processor == BLADE


def on_call(route: _RouteLike, *, asynchronous: bool = False) -> type[Any]:
    """The client class that serves a route: ``BladeClient`` for blade, ``EasClient`` otherwise,
    ``pipeline`` routes included (their ``Async`` twins with ``asynchronous=True``)."""
    if is_blade(route):
        from blade_client import AsyncBladeClient, BladeClient

        return AsyncBladeClient if asynchronous else BladeClient
    from eas_client import AsyncEasClient, EasClient

    return AsyncEasClient if asynchronous else EasClient


def call_options(route: RouteEntry, fallback: Callable[[str], Any]) -> dict[str, Any]:
    """The extra constructor options of ``on_call(route)``'s class.

    Args:
        route: the route.
        fallback: gives the client of a version (the SDK's cache); called for a blade route's
            ``fallback_version`` only.

    Returns:
        ``{}`` for plain; for blade, ``blade`` (the metadata, as its JSON object) and
        ``fallback`` (a client or None).
    """
    if not is_blade(route) or route.blade is None:
        return {}
    version = route.blade.fallback_version
    return {
        "blade": route.blade.model_dump(mode="json"),
        "fallback": fallback(version) if version else None,
    }
