"""The blade profile of a route, and what a request needs to fit it (pure, no I/O).

A blade artifact is built and verified for a range of shapes: its route entry carries them as
``"profiles": {"batch": [lo, hi], "seq": [lo, hi]}`` (either may be missing or null: no limit).
The batch is axis 0 of every input; the sequence is axis 1 of every input of rank 2 or more.
A request whose batch is above the profile is cut into chunks that fit and the outputs are put
back together in order; a request whose sequence (or batch below the minimum) is outside the
profile cannot be served by the blade engine at all and goes to the route's fallback version.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._errors import InvalidProfile

__all__ = ["BladeProfile", "Plan", "merge_outputs"]

Inputs = Mapping[str, np.ndarray]


def _range(meta: Mapping[str, Any], axis: str) -> tuple[int, int] | None:
    value = meta.get(axis)
    if value is None:
        return None
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str | bytes)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise InvalidProfile(f"profile {axis!r} is {value!r}, expected [min, max] of integers")
    lo, hi = int(value[0]), int(value[1])
    if not 1 <= lo <= hi:
        raise InvalidProfile(f"profile {axis!r} is [{lo}, {hi}], expected 1 <= min <= max")
    return lo, hi


@dataclass(frozen=True, slots=True)
class Plan:
    """How to send one request.

    Attributes:
        parts: the requests to send, in order (one unless the batch was split).
        fallback: why the request cannot go to the blade engine (None: it can).
    """

    parts: tuple[Mapping[str, np.ndarray], ...]
    fallback: str | None = None


@dataclass(frozen=True, slots=True)
class BladeProfile:
    """The shape ranges a blade engine serves.

    Attributes:
        batch: ``(min, max)`` rows per engine call, or None for no limit.
        seq: ``(min, max)`` of axis 1 of inputs of rank >= 2, or None for no limit.
    """

    batch: tuple[int, int] | None = None
    seq: tuple[int, int] | None = None

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any] | None) -> BladeProfile:
        """The profile of a route's ``blade`` metadata (``{"profiles": {...}, ...}``).

        Raises:
            InvalidProfile: ``profiles`` is not of the documented shape.
        """
        profiles = (meta or {}).get("profiles") or {}
        if not isinstance(profiles, Mapping):
            raise InvalidProfile(f"profiles is {profiles!r}, expected an object")
        return cls(batch=_range(profiles, "batch"), seq=_range(profiles, "seq"))

    def plan(self, inputs: Inputs) -> Plan:
        """Split ``inputs`` into requests that fit the profile, or say why none can."""
        arrays = list(inputs.values())
        if not arrays:
            return Plan((inputs,))
        rows = arrays[0].shape[0] if arrays[0].ndim else 1
        if self.seq is not None:
            lo, hi = self.seq
            for name, array in inputs.items():
                if array.ndim >= 2 and not lo <= array.shape[1] <= hi:
                    return Plan(
                        (inputs,),
                        f"input {name!r} has sequence length {array.shape[1]}, "
                        f"outside the blade profile [{lo}, {hi}]",
                    )
        if self.batch is None or any(a.ndim == 0 for a in arrays):
            return Plan((inputs,))
        lo, hi = self.batch
        if rows < lo:
            return Plan((inputs,), f"batch of {rows} is below the blade profile's minimum {lo}")
        if rows <= hi:
            return Plan((inputs,))
        parts = tuple(
            {name: array[start : start + hi] for name, array in inputs.items()}
            for start in range(0, rows, hi)
        )
        if lo > 1 and parts[-1][next(iter(inputs))].shape[0] < lo:
            return Plan(
                (inputs,),
                f"batch of {rows} leaves a last chunk below the blade profile's minimum {lo}",
            )
        return Plan(parts)


def merge_outputs(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The outputs of split requests put back together along the batch axis, in order."""
    if len(parts) == 1:
        return dict(parts[0])
    return {name: np.concatenate([p[name] for p in parts], axis=0) for name in parts[0]}
