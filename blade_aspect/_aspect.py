"""The three join points where a blade route differs from a plain one.

- ``on_deploy``: the control plane hands over a model and an EAS-style service spec; a blade spec
  (``"processor": "blade"`` or ``"blade": true | {options}``) runs ``blade.optimize`` (its artifact
  cache makes a repeat free) and gets the ``blade`` processor and the artifact; a plain spec, or a
  model no blade candidate improves, gets the ``onnx`` processor and the model as it is.
- ``on_publish``: one published route ``{version, weight}`` plus what its deployment recorded
  becomes a route-table entry (service, processor, and for blade the engine, profiles,
  fallback version and report digest).
- ``on_call``: the SDK asks which client class serves a route, and with which extra options.

Nothing else in the project compares a processor to ``"blade"``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ._errors import InvalidDeploySpec, InvalidRouteRequest, NotOptimized

__all__ = [
    "BLADE",
    "PLAIN",
    "DeployPlan",
    "call_options",
    "is_blade",
    "on_call",
    "on_deploy",
    "on_publish",
    "wants_blade",
]

BLADE = "blade"
PLAIN = "onnx"
_DEFAULT_MAX_BATCH = 32
_BLADE_OPTIONS = {"device", "level", "tolerance", "test_data", "batch_sizes", "seq", "required"}


class _RouteLike(Protocol):
    @property
    def processor(self) -> str: ...


@dataclass(frozen=True)
class DeployPlan:
    """What to start for a deployment.

    Attributes:
        processor: ``"onnx"`` or ``"blade"`` (the ``eas-server --processor``).
        model_path: what ``eas-server --model`` gets (the blade artifact directory for blade).
        blade: the route-table metadata of a blade deployment (engine, profiles, report digest),
            None for plain.
        report: the optimizer's report when blade was asked for (also when it chose plain).
        reason: one line on why this processor.
    """

    processor: str
    model_path: Path
    blade: dict[str, Any] | None = None
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
    if processor is not None and processor not in (PLAIN, BLADE):
        raise InvalidDeploySpec(
            f"processor is {processor!r}, expected {PLAIN!r} or {BLADE!r} (or blade: true)"
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
    unknown = sorted(set(options) - _BLADE_OPTIONS)
    if unknown:
        raise InvalidDeploySpec(
            f"unknown blade option(s) {unknown}, expected some of {sorted(_BLADE_OPTIONS)}"
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


def _profiles(doc: Mapping[str, Any], max_batch: int) -> dict[str, list[int] | None]:
    """The shapes the engine serves: any batch up to the server's max batch; the sequence range
    of a TensorRT engine's optimization profile, else no limit (ONNX Runtime takes any length)."""
    seq: list[int] | None = None
    trt = (doc.get("runtime") or {}).get("trt_options") or {}
    shapes = trt.get("trt_profile_max_shapes")
    if isinstance(shapes, str) and shapes:
        lengths = [int(d.split("x")[1]) for d in shapes.split(",") if d.count("x") >= 1]
        low = trt.get("trt_profile_min_shapes", "")
        lows = [int(d.split("x")[1]) for d in low.split(",") if d.count("x") >= 1] or [1]
        if lengths:
            seq = [max(1, min(lows)), min(lengths)]
    return {"batch": [1, max_batch], "seq": seq}


def _engine(doc: Mapping[str, Any]) -> str:
    provider = (doc.get("runtime") or {}).get("provider", "cpu")
    candidate = str(doc.get("candidate", "plain"))
    return candidate if provider == "tensorrt" else f"ort-{provider}-{candidate}"


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
        model: the registered ONNX model.
        spec: the EAS-style service spec (``processor``, ``blade``, ``metadata.rpc``...).
            ``blade`` may be an object of optimizer options: ``device`` (``cpu``/``cuda``),
            ``level``, ``tolerance``, ``test_data`` (npz path), ``batch_sizes``, ``seq``, and
            ``required`` (fail rather than serve plain when no candidate qualifies).
        output_dir: where the artifact goes (default: next to the model).
        cache_dir: the optimizer's artifact cache.
        progress: passed to the optimizer.
        optimize: the optimizer (default ``blade.optimize``; a job runner may wrap it).

    Returns:
        The plan; for blade, ``report`` is the optimizer's report. When no candidate passed its
        gate and beat the plain model, the plan is plain (processor ``onnx``) and says why.

    Raises:
        InvalidDeploySpec: the spec is malformed.
        NotOptimized: ``required`` was set and the optimizer kept the plain model.
        blade.BladeError: the optimizer refused the model or its test data.
    """
    path = Path(model)
    if not wants_blade(spec):
        return DeployPlan(PLAIN, path, reason="plain deployment asked for")
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
        return DeployPlan(PLAIN, path, report=report, reason=f"served plain: {why}")
    artifact = Path(result.artifact_dir)
    doc = json.loads((artifact / "blade.json").read_text())
    digest = hashlib.sha256((artifact / "report.json").read_bytes()).hexdigest()
    meta = {
        "engine": _engine(doc),
        "profiles": _profiles(doc, max_batch),
        "report_sha256": digest,
        "speedup": round(float(result.speedup), 3),
    }
    return DeployPlan(
        BLADE,
        artifact,
        blade=meta,
        report=report,
        reason=f"blade {report['chosen']}: {float(result.speedup):.2f}x faster",
    )


def _version(value: Any, what: str) -> str:
    if not isinstance(value, str | int) or isinstance(value, bool) or str(value) == "":
        raise InvalidRouteRequest(f"{what} is {value!r}, expected a version string")
    return str(value)


def on_publish(
    route: Mapping[str, Any],
    deployment: Mapping[str, Any],
    *,
    fallback_version: str | None = None,
) -> dict[str, Any]:
    """The route-table entry of one published route.

    Args:
        route: the publish request's entry, ``{"version": "3", "weight": 90}``; a blade route may
            name its own ``fallback_version``.
        deployment: what the deployment of that version recorded: ``service``, ``processor``,
            and for blade ``blade`` (the ``DeployPlan.blade`` metadata).
        fallback_version: the plain version a blade route falls back to when the route does not
            name one (the control plane passes the best plain version of the table, if any).

    Returns:
        ``{"version", "weight", "service", "processor"}`` plus ``"blade": {...}`` for blade.

    Raises:
        InvalidRouteRequest: a missing or malformed field, or a blade route falling back to itself.
    """
    version = _version(route.get("version"), "route version")
    weight = route.get("weight")
    if not isinstance(weight, int) or isinstance(weight, bool) or weight < 0:
        raise InvalidRouteRequest(
            f"route {version}: weight is {weight!r}, expected an integer >= 0"
        )
    service = deployment.get("service")
    if not isinstance(service, str) or not service:
        raise InvalidRouteRequest(f"route {version}: the deployment records no service")
    processor = deployment.get("processor", PLAIN)
    entry: dict[str, Any] = {
        "version": version,
        "weight": weight,
        "service": service,
        "processor": processor,
    }
    if processor != BLADE:
        return entry
    meta = deployment.get("blade")
    if not isinstance(meta, Mapping):
        raise InvalidRouteRequest(f"route {version}: a blade deployment without blade metadata")
    fallback = route.get("fallback_version", fallback_version)
    if fallback is not None:
        fallback = _version(fallback, f"route {version}: fallback_version")
        if fallback == version:
            raise InvalidRouteRequest(f"route {version}: a blade route cannot fall back to itself")
    entry["blade"] = {
        "engine": meta.get("engine"),
        "profiles": meta.get("profiles") or {"batch": None, "seq": None},
        "fallback_version": fallback,
        "report_sha256": meta.get("report_sha256"),
    }
    return entry


def _processor(route: _RouteLike | Mapping[str, Any]) -> str:
    if isinstance(route, Mapping):
        return str(route.get("processor", PLAIN))
    return route.processor


def is_blade(route: _RouteLike | Mapping[str, Any]) -> bool:
    """Whether a route (route-table entry or parsed route) is served by a blade engine."""
    return _processor(route) == BLADE


def on_call(route: _RouteLike | Mapping[str, Any], *, asynchronous: bool = False) -> type[Any]:
    """The client class that serves a route: ``BladeClient`` for blade, ``EasClient`` otherwise
    (their ``Async`` twins with ``asynchronous=True``)."""
    if is_blade(route):
        from blade_client import AsyncBladeClient, BladeClient

        return AsyncBladeClient if asynchronous else BladeClient
    from eas_client import AsyncEasClient, EasClient

    return AsyncEasClient if asynchronous else EasClient


def _blade_meta(route: _RouteLike | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(route, Mapping):
        meta = route.get("blade") or {}
    else:
        raw = getattr(route, "raw", None)
        meta = (raw.get("blade") if isinstance(raw, Mapping) else None) or {}
    return meta if isinstance(meta, Mapping) else {}


def call_options(
    route: _RouteLike | Mapping[str, Any], fallback: Callable[[str], Any]
) -> dict[str, Any]:
    """The extra constructor options of ``on_call(route)``'s class.

    Args:
        route: the route.
        fallback: gives the client of a version (the SDK's cache); called for a blade route's
            ``fallback_version`` only.

    Returns:
        ``{}`` for plain; for blade, ``blade`` (the metadata) and ``fallback`` (a client or None).
    """
    if not is_blade(route):
        return {}
    meta = _blade_meta(route)
    version = meta.get("fallback_version")
    return {"blade": dict(meta), "fallback": fallback(str(version)) if version else None}
