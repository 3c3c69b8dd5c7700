"""Verification fitting generation: how far a candidate's answers are from the fp32 CPU
reference's, and the gates it must pass. Pure: arrays and token lists in, figures out.

Two measures, each a gate:

- teacher-forced logits: both runtimes are fed the reference's own greedy output, token by token
  through their caches, so every prediction is made from the same prefix; per prediction (one
  row of ``V`` logits) the cosine and the largest absolute difference, at several target lengths
  (the first 8, 16, 32 predictions of each clip). The gate holds the smallest cosine and the
  largest difference, the latter relative to the reference's largest logit (scale-free).
- greedy-token agreement: each runtime decodes greedily on its own, as served (iteration-level
  batching over the whole set); per clip the agreed prefix (leading tokens equal, the end of
  sequence counting as a token). The gate holds the share of clips whose first ``agree_tokens``
  tokens agree and the mean agreed prefix, as a share of the reference's length.

Tokens can flip where the reference's top two logits are nearly tied, however small the error:
the agreement gate is what says whether users see different answers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

__all__ = [
    "AGREE_TOKENS",
    "GENERATION_GATES",
    "TARGET_LENGTHS",
    "Agreement",
    "GenerationGate",
    "TeacherForced",
    "agreement",
    "check_generation",
    "generation_gate",
    "teacher_forced",
]

TARGET_LENGTHS = (8, 16, 32)
"""Predictions per clip the teacher-forced figures are taken over."""
AGREE_TOKENS = 8
"""The first tokens a clip's greedy answer must reproduce to count as agreeing."""


@dataclass(frozen=True)
class GenerationGate:
    """Thresholds of one accuracy tier for generation.

    Attributes:
        logits_cosine_min: smallest cosine of a teacher-forced prediction's logits.
        logits_max_abs_max: largest absolute logit difference, over the reference's largest
            absolute logit.
        agree_share_min: share of clips whose first ``agree_tokens`` greedy tokens agree.
        mean_prefix_min: mean agreed greedy prefix, as a share of the reference's length.
        agree_tokens: see ``agree_share_min``.
    """

    logits_cosine_min: float
    logits_max_abs_max: float
    agree_share_min: float
    mean_prefix_min: float
    agree_tokens: int = AGREE_TOKENS

    def json(self) -> dict[str, float | int]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping[str, float | int]) -> GenerationGate:
        return cls(
            float(doc["logits_cosine_min"]),
            float(doc["logits_max_abs_max"]),
            float(doc["agree_share_min"]),
            float(doc["mean_prefix_min"]),
            int(doc.get("agree_tokens", AGREE_TOKENS)),
        )


GENERATION_GATES: dict[str, GenerationGate] = {
    "lossless": GenerationGate(0.99999, 0.001, 1.0, 1.0),
    "fp16": GenerationGate(0.999, 0.02, 0.75, 0.6),
    "int8": GenerationGate(0.99, 0.1, 0.5, 0.4),
}
"""Defaults per tier. Lossless: the same answers, logits within float reordering (4x the
device's own noise when plain ORT on the device is further from the CPU reference). Lossy tiers
may flip near-tied tokens, after which a greedy answer goes its own way: the agreement gates
bound how often that happens early."""

_KEYS = {
    "logits_cosine": "logits_cosine_min",
    "logits_max_abs": "logits_max_abs_max",
    "agree_share": "agree_share_min",
    "mean_prefix": "mean_prefix_min",
}


def generation_gate(
    tier: str,
    tolerance: float | Mapping[str, float] | None = None,
    base: GenerationGate | None = None,
) -> GenerationGate:
    """The tier's default gate with the user's tolerance applied: a float is the logits cosine
    floor of the lossy tiers; a mapping may set ``logits_cosine``, ``logits_max_abs``,
    ``agree_share`` and ``mean_prefix`` for every tier (and ``cosine``, blade's key for the
    cosine floor of other models, means ``logits_cosine``). ``base``: the gate the tolerance
    applies to (default: the tier's).

    Raises:
        ValueError: an unknown key in ``tolerance``.
    """
    gate = base or GENERATION_GATES[tier]
    if tolerance is None:
        return gate
    if isinstance(tolerance, int | float):
        if tier == "lossless":
            return gate
        return replace(gate, logits_cosine_min=float(tolerance))
    doc = gate.json()
    for key, value in tolerance.items():
        name = _KEYS.get("logits_cosine" if key == "cosine" else key)
        if name is None:
            raise ValueError(
                f"tolerance key {key!r} does not apply to a generation bundle; expected "
                f"{', '.join(sorted(_KEYS))}"
            )
        doc[name] = float(value)
    return GenerationGate.from_json(doc)


@dataclass(frozen=True)
class TeacherForced:
    """Teacher-forced logits of a candidate against the reference over the first ``length``
    predictions of each clip (``predictions`` rows in all)."""

    length: int
    predictions: int
    cosine_min: float
    max_abs: float
    rel_max_abs: float
    rel_l2: float
    nan_inf: int

    def json(self) -> dict[str, float | int]:
        return asdict(self)


def teacher_forced(
    reference: np.ndarray,
    candidate: np.ndarray,
    lengths: Sequence[int],
    at: Sequence[int] = TARGET_LENGTHS,
) -> list[TeacherForced]:
    """Figures per target length in ``at`` for logits ``[clips, K, V]``; clip ``i`` has
    ``lengths[i]`` valid predictions (its reference answer may end early)."""
    if reference.shape != candidate.shape:
        raise ValueError(f"logits of shape {candidate.shape} against {reference.shape}")
    out: list[TeacherForced] = []
    for length in at:
        rows = [(i, t) for i, n in enumerate(lengths) for t in range(min(length, n))]
        index = tuple(np.array(rows, dtype=np.int64).T) if rows else (np.array([], int),) * 2
        ref = reference[index].astype(np.float64)
        got = candidate[index].astype(np.float64)
        bad = int((~np.isfinite(got)).sum()) - int((~np.isfinite(ref)).sum())
        finite = np.isfinite(ref) & np.isfinite(got)
        ref, got = np.where(finite, ref, 0.0), np.where(finite, got, 0.0)
        diff = np.abs(got - ref)
        norms = np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = np.where(norms > 0, (ref * got).sum(axis=-1) / norms, 1.0)
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        max_abs = float(diff.max()) if diff.size else 0.0
        ref_norm = float(np.linalg.norm(ref))
        out.append(
            TeacherForced(
                length=length,
                predictions=len(rows),
                cosine_min=float(cos.min()) if cos.size else 1.0,
                max_abs=max_abs,
                rel_max_abs=max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else 1.0),
                rel_l2=float(np.linalg.norm(got - ref)) / ref_norm if ref_norm > 0 else 0.0,
                nan_inf=max(0, bad),
            )
        )
    return out


@dataclass(frozen=True)
class Agreement:
    """Greedy answers of a candidate against the reference's.

    Attributes:
        tokens: the first tokens compared for ``share`` (``agree_tokens``).
        share: clips whose first ``tokens`` tokens (or whole answer, when shorter) agree.
        mean_prefix: the mean agreed prefix, as a share of the reference answer's length.
        prefixes: the agreed prefix of each clip, in tokens.
    """

    tokens: int
    share: float
    mean_prefix: float
    prefixes: tuple[int, ...]

    def json(self) -> dict[str, object]:
        return {**asdict(self), "prefixes": list(self.prefixes)}


def agreement(
    reference: Sequence[Sequence[int]], candidate: Sequence[Sequence[int]], tokens: int
) -> Agreement:
    """Compare greedy answers clip by clip (each ending with its end-of-sequence token when it
    stopped there, so stopping early where the reference goes on is a difference)."""
    if len(reference) != len(candidate) or not reference:
        raise ValueError(
            f"{len(candidate)} candidate answers against {len(reference)} reference answers"
        )
    prefixes: list[int] = []
    shares: list[float] = []
    agreeing = 0
    for ref, got in zip(reference, candidate, strict=True):
        prefix = 0
        for a, b in zip(ref, got, strict=False):
            if a != b:
                break
            prefix += 1
        prefixes.append(prefix)
        shares.append(prefix / len(ref) if ref else 1.0)
        agreeing += prefix >= min(tokens, len(ref))
    return Agreement(tokens, agreeing / len(reference), float(np.mean(shares)), tuple(prefixes))


def check_generation(
    figures: Sequence[TeacherForced], agree: Agreement | None, gate: GenerationGate
) -> tuple[bool, str]:
    """Whether the figures pass the gate, and if not, the first reason (with the figures)."""
    for tf in figures:
        if tf.nan_inf:
            return False, f"logits@{tf.length}: {tf.nan_inf} NaN/Inf values the reference lacks"
        if not tf.cosine_min >= gate.logits_cosine_min:
            return False, (
                f"teacher-forced logits@{tf.length}: cosine {tf.cosine_min:.6f} < "
                f"{gate.logits_cosine_min} (max abs {tf.max_abs:.3g}, {tf.rel_max_abs:.2%} of "
                "the largest logit)"
            )
        if not tf.rel_max_abs <= gate.logits_max_abs_max:
            return False, (
                f"teacher-forced logits@{tf.length}: max abs {tf.max_abs:.3g} is "
                f"{tf.rel_max_abs:.2%} of the largest logit > {gate.logits_max_abs_max:.2%} "
                f"(cosine {tf.cosine_min:.6f})"
            )
    if agree is not None:
        if not agree.share >= gate.agree_share_min:
            return False, (
                f"greedy agreement: {agree.share:.0%} of clips agree on their first "
                f"{agree.tokens} tokens < {gate.agree_share_min:.0%} (mean agreed prefix "
                f"{agree.mean_prefix:.0%}, prefixes {list(agree.prefixes)})"
            )
        if not agree.mean_prefix >= gate.mean_prefix_min:
            return False, (
                f"greedy agreement: mean agreed prefix {agree.mean_prefix:.0%} < "
                f"{gate.mean_prefix_min:.0%} (prefixes {list(agree.prefixes)})"
            )
    return True, "passed"
