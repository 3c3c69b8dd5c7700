"""Accuracy of a candidate against the fp32 CPU reference, and the gates it must pass. Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["GATES", "Gate", "OutputMetrics", "check", "compare", "gate_for", "masked"]

_CLASSIFIER = re.compile(r"logit|prob|score|class|label|pred", re.IGNORECASE)


@dataclass(frozen=True)
class OutputMetrics:
    """How far one output of a candidate is from the reference.

    Attributes:
        max_abs: largest absolute difference.
        rel_l2: ||candidate - reference|| / ||reference|| over the whole output.
        cosine: the smallest per-example cosine similarity (examples = rows of the batch dim).
        nan_inf: NaN and Inf values in the candidate beyond those in the reference.
        top1: share of examples whose arg-max agrees (classifier outputs only, else None).
    """

    max_abs: float
    rel_l2: float
    cosine: float
    nan_inf: int
    top1: float | None

    def json(self) -> dict[str, float | int | None]:
        return asdict(self)


@dataclass(frozen=True)
class Gate:
    """Thresholds a tier of pass must meet on every output (None: not checked)."""

    rel_l2_max: float | None = None
    cosine_min: float | None = None
    top1_min: float | None = None

    def json(self) -> dict[str, float | None]:
        return asdict(self)


GATES: dict[str, Gate] = {
    "lossless": Gate(rel_l2_max=1e-4),
    "fp16": Gate(cosine_min=0.9995, top1_min=0.995),
    "int8": Gate(cosine_min=0.99, top1_min=0.99),
}


def gate_for(tier: str, tolerance: float | Mapping[str, float] | None = None) -> Gate:
    """The tier's default gate, with the user's tolerance applied.

    A float is the cosine floor of the lossy tiers (lossless stays at its rel-L2 bound); a mapping
    may set ``rel_l2``, ``cosine`` and ``top1`` for every tier.
    """
    gate = GATES[tier]
    if tolerance is None:
        return gate
    if isinstance(tolerance, int | float):
        return (
            gate if tier == "lossless" else Gate(gate.rel_l2_max, float(tolerance), gate.top1_min)
        )
    return Gate(
        tolerance.get("rel_l2", gate.rel_l2_max),
        tolerance.get("cosine", gate.cosine_min),
        tolerance.get("top1", gate.top1_min),
    )


def _rows(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64, copy=False)
    return a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(1, -1)


def masked(
    outputs: Mapping[str, np.ndarray], mask: np.ndarray | None, names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Zero the positions an attention mask marks as padding in the named per-token outputs
    ([batch, seq, ...]): what a model computes there is never used, so it is not compared."""
    if mask is None:
        return dict(outputs)
    out = dict(outputs)
    for name in names:
        arr = out.get(name)
        if arr is not None and arr.ndim >= 2 and arr.shape[:2] == mask.shape:
            keep = mask.astype(bool).reshape(mask.shape + (1,) * (arr.ndim - 2))
            out[name] = np.where(keep, arr, 0)
    return out


def compare(
    reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]
) -> dict[str, OutputMetrics]:
    """Metrics per output. Float outputs only; integer outputs must match exactly (their rel-L2
    then is 0 or 1 and the cosine 1 or 0). Apply ``masked`` to both sides first for per-token
    outputs of padded inputs."""
    metrics: dict[str, OutputMetrics] = {}
    for name, ref in reference.items():
        got = candidate[name]
        if got.shape != ref.shape:
            metrics[name] = OutputMetrics(float("inf"), float("inf"), -1.0, 0, 0.0)
            continue
        r, c = _rows(ref), _rows(got)
        bad_ref = int((~np.isfinite(r)).sum())
        bad = max(0, int((~np.isfinite(c)).sum()) - bad_ref)
        finite = np.isfinite(r) & np.isfinite(c)
        diff = np.where(finite, c - r, 0.0)
        max_abs = float(np.abs(diff).max()) if diff.size else 0.0
        ref_norm = float(np.linalg.norm(np.where(finite, r, 0.0)))
        rel_l2 = (
            float(np.linalg.norm(diff)) / ref_norm
            if ref_norm > 0
            else (0.0 if max_abs == 0 else float("inf"))
        )
        rn = np.linalg.norm(np.where(finite, r, 0.0), axis=1)
        cn = np.linalg.norm(np.where(finite, c, 0.0), axis=1)
        dots = (np.where(finite, r, 0.0) * np.where(finite, c, 0.0)).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = np.where(
                (rn > 0) & (cn > 0), dots / (rn * cn), np.where((rn == 0) & (cn == 0), 1.0, 0.0)
            )
        cosine = float(cos.min()) if cos.size else 1.0
        top1 = None
        if ref.ndim == 2 and ref.shape[1] > 1 and _CLASSIFIER.search(name):
            top1 = float((ref.argmax(axis=1) == got.argmax(axis=1)).mean())
        metrics[name] = OutputMetrics(max_abs, rel_l2, cosine, bad, top1)
    return metrics


def check(metrics: Mapping[str, OutputMetrics], gate: Gate) -> tuple[bool, str]:
    """Whether every output passes the gate, and if not, the first reason why."""
    for name, m in metrics.items():
        if m.nan_inf:
            return False, f"{name}: {m.nan_inf} NaN/Inf values the reference does not have"
        if gate.rel_l2_max is not None and not m.rel_l2 <= gate.rel_l2_max:
            return False, f"{name}: rel L2 {m.rel_l2:.2e} > {gate.rel_l2_max:.0e}"
        if gate.cosine_min is not None and not m.cosine >= gate.cosine_min:
            return False, f"{name}: cosine {m.cosine:.5f} < {gate.cosine_min}"
        if gate.top1_min is not None and m.top1 is not None and m.top1 < gate.top1_min:
            return False, f"{name}: top-1 agreement {m.top1:.1%} < {gate.top1_min:.1%}"
    return True, "passed"
