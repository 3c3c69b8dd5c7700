"""Compare a shadow version's outputs with the primary's, for the shadow agreement metrics.

Off the call path (the comparison runs after the primary answer is returned), so clarity wins
over speed. Only outputs present on both sides are compared. Numeric outputs are flattened to
float64 and measured by cosine; BYTES outputs (labels, slot spans) by agreement per row, since a
cosine of text means nothing.

- ``cosine``: the minimum over numeric outputs of the cosine similarity, so that one disagreeing
  output is never hidden by a large agreeing one (a mean or a concatenation would dilute a wrong
  2-element head next to a 10,000-element embedding). Two zero vectors agree (1.0); a zero vector
  against a non-zero one does not (0.0).
- ``max_abs``: the largest absolute difference over every compared numeric element.
- ``top1_agreement``: for numeric outputs of rank >= 2, the fraction of rows (all axes but the
  last) whose argmax over the last axis is the same; the minimum over such outputs; ``None`` when
  no numeric output has rank >= 2 (or rows).
- ``cosine`` and ``max_abs`` are ``None`` when no numeric output was compared (a model of labels
  only): nothing was measured, and neither 1 nor 0 would be true.
- ``labels``: for each BYTES output, how many rows there were and how many agree. A row of a
  rank-1 output is one element: the label. A row of a rank >= 2 output is a ranked list over the
  last axis (a pipeline's top-k ``labels``), best first, and only its first element, the top
  label, is compared. Elements are compared as text (UTF-8 ``bytes`` and ``str`` alike); an
  element that is a JSON array of ``{"slot", "value", ...}`` objects (a pipeline's ``slots``) is
  compared as the set of its ``(slot, value)`` pairs, so that span order and offsets do not count.
  ``label_agreement`` is the lowest fraction over those outputs. Mismatched shapes, or BYTES on one
  side only, leave every row disagreeing, with a reason.
- Disagreements that leave nothing to measure (shapes differ, NaN, an infinity on one side only,
  no output in common) count as complete disagreement (cosine 0, top-1 0, ``max_abs`` infinite)
  and say why in ``reason``. Infinities equal on both sides are equal values (masked logits) and
  left out of cosine and ``max_abs``; a row with a NaN never agrees on top-1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

__all__ = ["Comparison", "LabelAgreement", "compare_outputs"]

_NON_NUMERIC = frozenset("OSUV")  # object (BYTES), bytes, str, void
_SCALARS = (str, int, float, bool, type(None))  # what a slot's name and value can be


@dataclass(frozen=True, slots=True)
class LabelAgreement:
    """Row agreement of one BYTES output between the shadow and the primary, for one call.

    Attributes:
        output: the output's name.
        rows: rows compared (the larger side's, when the shapes differ).
        agreeing: rows whose top label (or slot span set) is the same on both sides.
    """

    output: str
    rows: int
    agreeing: int

    @property
    def fraction(self) -> float | None:
        """``agreeing / rows``, or ``None`` for an output of no rows."""
        return self.agreeing / self.rows if self.rows else None


@dataclass(frozen=True, slots=True)
class Comparison:
    """How close a shadow version's outputs were to the primary's, for one call.

    Attributes:
        cosine: the lowest cosine similarity over the compared numeric outputs, in ``[-1, 1]``;
            ``None`` when none was numeric.
        max_abs: the largest absolute difference over the compared numeric outputs (``inf`` when
            they could not be compared element-wise); ``None`` when none was numeric.
        top1_agreement: the lowest fraction of rows agreeing on the argmax of the last axis over
            the numeric outputs of rank >= 2, or ``None`` when there is none.
        outputs_compared: the outputs present on both sides, in the primary's order.
        reason: why some output counted as complete disagreement, or ``None``.
        labels: the row agreement of each compared BYTES output, in the primary's order.
    """

    cosine: float | None
    max_abs: float | None
    top1_agreement: float | None
    outputs_compared: tuple[str, ...]
    reason: str | None = None
    labels: tuple[LabelAgreement, ...] = ()

    @property
    def label_agreement(self) -> float | None:
        """The lowest fraction of agreeing rows over the BYTES outputs, or ``None`` when there is
        no BYTES output (or no row)."""
        fractions = [f for f in (a.fraction for a in self.labels) if f is not None]
        return min(fractions) if fractions else None


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
        missing = f"no output in common: primary {sorted(primary)}, shadow {sorted(shadow)}"
        return Comparison(0.0, math.inf, None, (), missing)
    results: list[_One] = []
    labels: list[LabelAgreement] = []
    reasons: list[str] = []
    for name in names:
        reason: str | None
        a, b = np.asarray(primary[name]), np.asarray(shadow[name])
        if a.dtype.kind in _NON_NUMERIC or b.dtype.kind in _NON_NUMERIC:
            agreement, reason = _compare_labels(name, a, b)
            labels.append(agreement)
        else:
            one = _compare_one(name, a, b)
            results.append(one)
            reason = one.reason
        if reason is not None:
            reasons.append(reason)
    top1 = [r.top1 for r in results if r.top1 is not None]
    return Comparison(
        cosine=min(r.cosine for r in results) if results else None,
        max_abs=max(r.max_abs for r in results) if results else None,
        top1_agreement=min(top1) if top1 else None,
        outputs_compared=names,
        reason="; ".join(reasons) if reasons else None,
        labels=tuple(labels),
    )


def _compare_one(name: str, a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> _One:
    ranked = a.ndim >= 2 or b.ndim >= 2
    if a.shape != b.shape:
        reason = f"output {name!r}: shape {list(a.shape)} vs {list(b.shape)}"
        return _One(0.0, math.inf, 0.0 if ranked else None, reason)
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


# -- BYTES: labels and slot spans ----------------------------------------------------------------


def _compare_labels(
    name: str, a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]
) -> tuple[LabelAgreement, str | None]:
    """Row agreement of a BYTES output: the top label of each row, or its set of slot spans."""
    if a.dtype.kind not in _NON_NUMERIC or b.dtype.kind not in _NON_NUMERIC:
        rows = max(_rows(a), _rows(b))
        return LabelAgreement(name, rows, 0), f"output {name!r}: {a.dtype} vs {b.dtype}"
    if a.shape != b.shape:
        rows = max(_rows(a), _rows(b))
        return LabelAgreement(name, rows, 0), (
            f"output {name!r}: shape {list(a.shape)} vs {list(b.shape)}"
        )
    top_a, top_b = _tops(a), _tops(b)
    agreeing = sum(_same(_canonical(x), _canonical(y)) for x, y in zip(top_a, top_b, strict=True))
    return LabelAgreement(name, len(top_a), agreeing), None


def _rows(array: np.ndarray[Any, Any]) -> int:
    if array.ndim <= 1:
        return int(array.size) if array.ndim else 1
    return math.prod(array.shape[:-1])


def _tops(array: np.ndarray[Any, Any]) -> list[Any]:
    """The label of each row: the element (rank <= 1) or the first of the last axis."""
    if array.ndim <= 1:
        return list(array.reshape(-1).tolist())
    if array.shape[-1] == 0:
        return [None] * _rows(array)  # rows with no label at all: equal to each other
    return list(array.reshape(-1, array.shape[-1])[:, 0].tolist())


def _same(x: Any, y: Any) -> bool:
    try:
        return bool(x == y)
    except (TypeError, ValueError):  # elements that are not text (arrays): never agreement
        return False


def _canonical(item: Any) -> Any:
    """What a BYTES element means for agreement: its text, or its set of (slot, value) spans."""
    if isinstance(item, bytes | bytearray):
        try:
            item = bytes(item).decode()
        except UnicodeDecodeError:
            return bytes(item)
    if isinstance(item, str):
        item = str(item)  # np.str_ -> str: the same label, whatever its Python type
        if item.lstrip()[:1] == "[":
            spans = _spans(item)
            if spans is not None:
                return spans
    return item


def _spans(text: str) -> frozenset[tuple[Any, Any]] | None:
    """``{(slot, value), ...}`` of a slots element, or ``None`` when the text is not one."""
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, list):
        return None
    spans: set[tuple[Any, Any]] = set()
    for span in doc:
        if not isinstance(span, dict) or "slot" not in span or "value" not in span:
            return None
        slot, value = span["slot"], span["value"]
        if not isinstance(slot, _SCALARS) or not isinstance(value, _SCALARS):
            return None
        spans.add((slot, value))
    return frozenset(spans)
