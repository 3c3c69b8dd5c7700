"""Validation helpers of the schema: non-empty strings, rule errors that carry a path, and the
conversion of a ``ValidationError`` into a field path and a one-line reason.

Cross-field rules raise ``refuse(reason, at)``: a pydantic error whose context says where below
the validator's own location the fault is (``[1].name``, ``shadow.version``), so that
``describe_error`` names the exact field as the built-in checks do.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import StrictStr, StringConstraints, ValidationError
from pydantic_core import PydanticCustomError

__all__ = ["Text", "describe_error", "refuse"]

Text = Annotated[StrictStr, StringConstraints(min_length=1)]
"""A non-empty string (never a number or a boolean)."""


def refuse(reason: str, at: str = "") -> PydanticCustomError:
    """A rule's validation error; ``at`` is the path below where the validator runs."""
    return PydanticCustomError("route_table", "{reason}", {"reason": reason, "at": at})


def _path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _shown(value: Any) -> str:
    """A value as the document had it: JSON for null, lists and objects, else its repr."""
    try:
        text = (
            json.dumps(value, separators=(",", ":"), ensure_ascii=False)
            if value is None or isinstance(value, list | tuple | dict)
            else repr(value)
        )
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def describe_error(exc: ValidationError) -> tuple[str, str]:
    """The field path (``routes[0].weight``, ``(document)`` for the whole) and a one-line reason
    of a validation error's first error."""
    error = exc.errors(include_url=False)[0]
    path = _path(error["loc"])
    ctx = error.get("ctx") or {}
    at = str(ctx.get("at", ""))
    if at:
        path = path + at if at.startswith("[") or not path else f"{path}.{at}"
    if error["type"] == "missing":
        return path or "(document)", "missing"
    reason = error["msg"]
    if error["type"] != "route_table" and "input" in error:
        reason += f", got {_shown(error['input'])}"
    return path or "(document)", reason
