"""EAS's dotted keys (``{"metadata.rpc.max_batch_size": 16}``) folded into nested objects, and the
error every deploy-spec refusal raises. Pure: dicts in, dicts out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from pydantic_core import PydanticCustomError

__all__ = ["fold_dotted", "refuse"]

_LEAVES: Final = frozenset({"metadata.padding"})  # keyed by input names, which may hold dots
_FOLD_DEPTH: Final = 4


def refuse(reason: str) -> PydanticCustomError:
    """Our message as the error (pydantic would prefix a ``ValueError``'s with "Value error")."""
    return PydanticCustomError("invalid_deploy_spec", "{reason}", {"reason": reason})


def fold_dotted(data: Mapping[str, Any], *, depth: int = _FOLD_DEPTH) -> dict[str, Any]:
    """EAS's dotted keys as nested objects: ``{"metadata.rpc.max_batch_size": 16}`` ->
    ``{"metadata": {"rpc": {"max_batch_size": 16}}}``, merged with what is given nested, at every
    level down to ``depth``. Inside ``metadata.padding`` nothing is folded (its keys are input
    names, which may hold dots). ``data`` is not changed.

    Raises:
        PydanticCustomError: a key given both ways, or dotted keys below a value that is not an
            object (``"metadata": "big", "metadata.instance": 2``).
    """
    return _fold(data, "", depth)


def _parts(key: object, where: str) -> list[Any]:
    """The path a key names; a key that is no dotted path (``.x``, ``x..y``) is one part."""
    if not isinstance(key, str):
        return [key]
    parts = key.split(".")
    if "" in parts:
        return [key]
    for i in range(1, len(parts)):  # nothing is split below a leaf
        if where + ".".join(parts[:i]) in _LEAVES:
            return [*parts[:i], ".".join(parts[i:])]
    return parts


def _fold(data: Mapping[Any, Any], where: str, depth: int) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for key, value in data.items():
        parts = _parts(key, where)
        node, path = out, where
        for part in parts[:-1]:
            path += str(part)
            child = node.get(part, {})
            if not isinstance(child, Mapping):
                raise refuse(f"{path} must be an object, got {child!r}")
            node[part] = child = dict(child)  # a copy: the caller's objects stay as they are
            node, path = child, path + "."
        _put(node, parts[-1], value, path + str(parts[-1]))
    if depth > 1:
        for key, value in out.items():
            if isinstance(value, Mapping) and f"{where}{key}" not in _LEAVES:
                out[key] = _fold(value, f"{where}{key}.", depth - 1)
    return out


def _put(node: dict[Any, Any], key: Any, value: Any, path: str) -> None:
    """``node[key] = value``, merging objects given both ways; a value given twice is refused."""
    if key not in node:
        node[key] = dict(value) if isinstance(value, Mapping) else value
        return
    earlier = node[key]
    if not (isinstance(earlier, Mapping) and isinstance(value, Mapping)):
        raise refuse(f"{path} is given twice (nested and dotted)")
    merged = node[key] = dict(earlier)
    for sub, item in value.items():
        _put(merged, sub, item, f"{path}.{sub}")
