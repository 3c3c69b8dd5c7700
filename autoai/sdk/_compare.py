"""Compare a shadow version's outputs with the primary's, for the shadow agreement metrics.

Off the call path (the comparison runs after the primary answer is returned), so clarity wins
over speed. Only outputs present on both sides are compared; each is flattened to float64.

- ``cosine``: the minimum over outputs of the cosine similarity, so that one disagreeing output
  is never hidden by a large agreeing one (a mean or a concatenation would dilute a wrong
  2-element head next to a 10,000-element embedding). Two zero vectors agree (1.0); a zero vector
  against a non-zero one does not (0.0).
- ``max_abs``: the largest absolute difference over every compared element.
- ``top1_agreement``: for outputs of rank >= 2, the fraction of rows (all axes but the last) whose
  argmax over the last axis is the same; the minimum over such outputs; ``None`` when no output
  has rank >= 2 (or rows).
- Disagreements that leave nothing to measure (shapes differ, NaN, an infinity on one side only,
  different BYTES, no output in common) count as complete disagreement (cosine 0, top-1 0,
  ``max_abs`` infinite) and say why in ``reason``. Infinities equal on both sides are equal values
  (masked logits) and left out of cosine and ``max_abs``; a row with a NaN never agrees on top-1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Comparison", "compare_outputs"]

_NON_NUMERIC = frozenset("OSUV")  # object (BYTES), bytes, str, void


@dataclass(frozen=True, slots=True)
class Comparison:
    """How close a shadow version's outputs were to the primary's, for one call.

    Attributes:
        cosine: the lowest cosine similarity over the compared outputs, in ``[-1, 1]``.
        max_abs: the largest absolute difference over the compared outputs (``inf`` when they
            could not be compared element-wise).
        top1_agreement: the lowest fraction of rows agreeing on the argmax of the last axis over
            the outputs of rank >= 2, or ``None`` when there is none.
        outputs_compared: the outputs present on both sides, in the primary's order.
        reason: why some output counted as complete disagreement, or ``None``.
    """

    cosine: float
    max_abs: float
    top1_agreement: float | None
    outputs_compared: tuple[str, ...]
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class _One:
    cosine: float
    max_abs: float
    top1: float | None
    reason: str | None = None


def compare_outputs(
    primary: Mapping[str, np.ndarray[Any, Any]], shadow: Mapping[str, np.ndarray[Any, Any]]
) -> Comparison:
    """Compare the outputs both versions returned.

    Args:
        primary: the primary version's outputs, name -> array.
        shadow: the shadow version's outputs, name -> array.

    Returns:
        The comparison; see the module docstring for how each number is defined.
    """
    names = tuple(name for name in primary if name in shadow)
    if not names:
        reason = f"no output in common: primary {sorted(primary)}, shadow {sorted(shadow)}"
        return Comparison(0.0, math.inf, None, (), reason)
    results = [
        _compare_one(name, np.asarray(primary[name]), np.asarray(shadow[name])) for name in names
    ]
    top1 = [r.top1 for r in results if r.top1 is not None]
    reasons = [r.reason for r in results if r.reason is not None]
    return Comparison(
        cosine=min(r.cosine for r in results),
        max_abs=max(r.max_abs for r in results),
        top1_agreement=min(top1) if top1 else None,
        outputs_compared=names,
        reason="; ".join(reasons) if reasons else None,
    )


def _compare_one(name: str, a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> _One:
    ranked = a.ndim >= 2 or b.ndim >= 2
    if a.shape != b.shape:
        reason = f"output {name!r}: shape {list(a.shape)} vs {list(b.shape)}"
        return _One(0.0, math.inf, 0.0 if ranked else None, reason)
    if a.dtype.kind in _NON_NUMERIC or b.dtype.kind in _NON_NUMERIC:
        if a.dtype.kind == b.dtype.kind and np.array_equal(a, b):
            return _One(1.0, 0.0, None)
        return _One(0.0, math.inf, None, f"output {name!r}: non-numeric values differ")
    x = a.astype(np.float64).reshape(-1)
    y = b.astype(np.float64).reshape(-1)
    top1 = _top1(a, b) if ranked else None
    finite_x, finite_y = np.isfinite(x), np.isfinite(y)
    if not (finite_x.all() and finite_y.all()):
        if np.isnan(x).any() or np.isnan(y).any():
            return _One(0.0, math.inf, top1, f"output {name!r}: NaN")
        # Infinities agree only where both sides have the same one.
        if not (np.array_equal(finite_x, finite_y) and np.array_equal(x[~finite_x], y[~finite_y])):
            return _One(0.0, math.inf, top1, f"output {name!r}: infinities differ")
        x, y = x[finite_x], y[finite_y]
    if np.array_equal(x, y):
        return _One(1.0, 0.0, top1)  # exactly, not to within rounding
    max_abs = float(np.max(np.abs(x - y))) if x.size else 0.0
    return _One(_cosine(x, y), max_abs, top1)


def _cosine(x: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> float:
    # Scaled to a max of 1 first, so that large magnitudes cannot overflow the norms.
    scale_x = float(np.max(np.abs(x))) if x.size else 0.0
    scale_y = float(np.max(np.abs(y))) if y.size else 0.0
    if scale_x == 0.0 or scale_y == 0.0:
        return 1.0 if scale_x == scale_y else 0.0
    x, y = x / scale_x, y / scale_y
    cosine = float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y)))
    return min(1.0, max(-1.0, cosine))


def _top1(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float | None:
    """Fraction of rows whose argmax over the last axis agrees; a row with a NaN disagrees."""
    if a.shape[-1] == 0:
        return None
    x = a.astype(np.float64).reshape(-1, a.shape[-1])
    y = b.astype(np.float64).reshape(-1, b.shape[-1])
    if x.shape[0] == 0:
        return None
    agree = (x.argmax(axis=1) == y.argmax(axis=1)) & ~(
        np.isnan(x).any(axis=1) | np.isnan(y).any(axis=1)
    )
    return float(agree.mean())
