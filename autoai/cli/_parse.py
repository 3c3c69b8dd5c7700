"""Pure parsing of the CLI's option values and the request bodies built from them (no I/O).

``--route 2=90``, ``--shadow 3:0.05``, ``--input x=[[1,2]]`` / ``--input x=@x.npy``, the EAS-style
deploy spec assembled from flags, and the weighted pick of a version for ``predict``. Every
malformed value raises ``BadUsage`` with the option, the value and what was expected.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import BadUsage

__all__ = [
    "deploy_spec",
    "parse_input",
    "parse_route",
    "parse_routes",
    "parse_shadow",
    "pick_version",
    "to_array",
]


def _version(text: str, option: str, value: str) -> str:
    version = text.strip()
    if not version or any(c.isspace() for c in version):
        raise BadUsage(f"{option} {value!r}: the version is empty or has spaces")
    return version


def parse_route(value: str) -> dict[str, Any]:
    """``"2=90"`` -> ``{"version": "2", "weight": 90}`` (weight an integer >= 0).

    Raises:
        BadUsage: not ``VERSION=WEIGHT`` with an integer weight >= 0.
    """
    version, sep, weight = value.partition("=")
    if not sep:
        raise BadUsage(f"--route {value!r}: expected VERSION=WEIGHT, such as 2=90")
    try:
        number = int(weight.strip())
    except ValueError:
        raise BadUsage(f"--route {value!r}: the weight must be an integer, such as 2=90") from None
    if number < 0:
        raise BadUsage(f"--route {value!r}: the weight must be >= 0")
    return {"version": _version(version, "--route", value), "weight": number}


def parse_routes(values: Iterable[str]) -> list[dict[str, Any]]:
    """Every ``--route``, in order; each version at most once and some weight > 0.

    Raises:
        BadUsage: a malformed route, a repeated version, no route, or all weights 0.
    """
    routes = [parse_route(v) for v in values]
    if not routes:
        raise BadUsage("give at least one --route VERSION=WEIGHT")
    versions = [r["version"] for r in routes]
    repeated = sorted({v for v in versions if versions.count(v) > 1})
    if repeated:
        raise BadUsage(f"--route: version(s) {', '.join(repeated)} given more than once")
    if not any(r["weight"] > 0 for r in routes):
        raise BadUsage("--route: every weight is 0, so no call would be routed anywhere")
    return routes


def parse_shadow(value: str) -> dict[str, Any]:
    """``"3:0.05"`` -> ``{"version": "3", "ratio": 0.05}`` (the fraction of calls mirrored).

    Raises:
        BadUsage: not ``VERSION:FRACTION`` with a fraction in [0, 1].
    """
    version, sep, ratio = value.partition(":")
    if not sep:
        raise BadUsage(f"--shadow {value!r}: expected VERSION:FRACTION, such as 3:0.05")
    try:
        fraction = float(ratio)
    except ValueError:
        raise BadUsage(f"--shadow {value!r}: the fraction must be a number in [0, 1]") from None
    if not (math.isfinite(fraction) and 0.0 <= fraction <= 1.0):
        raise BadUsage(f"--shadow {value!r}: the fraction must be in [0, 1]")
    return {"version": _version(version, "--shadow", value), "ratio": fraction}


def parse_input(value: str) -> tuple[str, Path | Any]:
    """``"x=@x.npy"`` -> ``("x", Path("x.npy"))``; ``"x=[[1, 2]]"`` -> ``("x", [[1, 2]])``.

    Raises:
        BadUsage: no ``NAME=``, or a value that is neither ``@FILE`` nor JSON.
    """
    name, sep, data = value.partition("=")
    name = name.strip()
    if not sep or not name:
        raise BadUsage(f"--input {value!r}: expected NAME=@FILE.npy or NAME=JSON")
    if data.startswith("@"):
        if len(data) == 1:
            raise BadUsage(f"--input {value!r}: no file after @")
        return name, Path(data[1:])
    try:
        return name, json.loads(data)
    except ValueError:
        raise BadUsage(
            f"--input {value!r}: the value is neither @FILE.npy nor JSON (such as [[1, 2]])"
        ) from None


def to_array(name: str, value: Any, dtype: np.dtype[Any] | None) -> np.ndarray[Any, Any]:
    """A JSON value as an array of ``dtype`` (the model's input type; ``None``: numpy's guess).

    Raises:
        BadUsage: the value is ragged or does not convert to ``dtype``.
    """
    try:
        array = np.asarray(value, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        wanted = "" if dtype is None else f" of {dtype}"
        raise BadUsage(f"--input {name}: not a rectangular array{wanted}: {exc}") from None
    if array.dtype == np.dtype(object) and dtype != np.dtype(object):
        raise BadUsage(f"--input {name}: not an array of numbers")
    return array


def _drop_none(values: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (values or {}).items() if v is not None}


def deploy_spec(
    base: Mapping[str, Any] | None = None,
    *,
    processor: str | None = None,
    blade: bool = False,
    blade_options: Mapping[str, Any] | None = None,
    instances: int | None = None,
    rpc: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """The EAS-style service spec of a deploy: ``base`` (a ``--spec`` file) overridden by flags.

    ``None`` values are left out, so the control plane's and the server's defaults apply. Any
    blade option implies ``blade``; ``blade`` without options keeps the base's options, or is
    ``true``.

    Args:
        base: a service spec to start from (``processor``, ``blade``, ``metadata``...).
        processor: ``onnx`` or ``blade``.
        blade: ask for the blade optimizer.
        blade_options: ``device``, ``level``, ``tolerance``, ``test_data``, ``batch_sizes``,
            ``seq``, ``required``.
        instances: ``metadata.instance``.
        rpc: ``metadata.rpc`` keys (``batching``, ``max_batch_size``, ``max_batch_timeout``,
            ``max_queue_size``, ``worker_threads``).
        metadata: other ``metadata`` keys (``intra_op_threads``, ``cpu``, ``gpu``, ``port``).
        token: the instances' token (``token``).

    Raises:
        BadUsage: ``base`` has a ``metadata`` or ``metadata.rpc`` that is not an object.
    """
    spec: dict[str, Any] = copy.deepcopy(dict(base or {}))
    if processor is not None:
        spec["processor"] = processor
    options = _drop_none(blade_options)
    if blade or options:
        earlier = spec.get("blade")
        spec["blade"] = {**(earlier if isinstance(earlier, Mapping) else {}), **options} or True
    meta = {**_drop_none(metadata), **({"instance": instances} if instances is not None else {})}
    rpc_keys = _drop_none(rpc)
    if meta or rpc_keys:
        merged = spec.setdefault("metadata", {})
        if not isinstance(merged, dict):
            raise BadUsage("--spec: metadata must be an object")
        merged.update(meta)
        if rpc_keys:
            merged_rpc = merged.setdefault("rpc", {})
            if not isinstance(merged_rpc, dict):
                raise BadUsage("--spec: metadata.rpc must be an object")
            merged_rpc.update(rpc_keys)
    if token is not None:
        spec["token"] = token
    return spec


def pick_version(routes: Mapping[str, int], u: float) -> str:
    """The version that ``u`` in [0, 1) falls on when the weights are laid end to end.

    With ``u`` uniform this picks each version with probability weight / total, as the SDK's
    split does over many calls.

    Raises:
        BadUsage: no weight is > 0.
    """
    total = sum(max(0, w) for w in routes.values())
    if total <= 0:
        raise BadUsage("the published routes give no version a weight > 0")
    point, upto = min(max(u, 0.0), 1.0) * total, 0
    positive = [(v, w) for v, w in routes.items() if w > 0]
    for version, weight in positive:
        upto += weight
        if point < upto:
            return version
    return positive[-1][0]
