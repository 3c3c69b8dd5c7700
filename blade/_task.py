"""The task gate: a lossy candidate of a pipeline bundle is also judged by what the bundle is for.

Numeric gates (cosine, rel-L2, top-1 agreement against the fp32 reference) say how far a
candidate's tensors moved; they cannot say whether the answers the bundle gives changed. With a
labelled evaluation set, every candidate is run through the bundle's own tokenization and
post-processing (``eas_server.pipeline.evaluate``) and scored by the task's metric (accuracy for
classify and score, slot F1 for slots); a lossy candidate that loses more than the tolerance
(in points: 0.5 = 0.005 of accuracy) against the fp32 plain model on the same set is refused,
whatever its numeric metrics. Lossless candidates are scored too (the report shows every step),
but held to their numeric bound only.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._errors import InvalidTestData
from ._runtime import BladeRuntime, RuntimeConfig

if TYPE_CHECKING:
    from eas_server.pipeline import Bundle, Example, TaskScore

__all__ = [
    "DEFAULT_TASK_TOLERANCE",
    "TaskGate",
    "check_tolerance",
    "numeric_only",
]

DEFAULT_TASK_TOLERANCE = 0.5
"""Points of the task metric (accuracy or slot F1, in percent) a lossy step may lose."""
_LOSSY = frozenset({"fp16", "int8"})
_EPSILON = 1e-9  # points: 1.0 - 0.995 is 0.5000000000000004 points, which must not be refused


def check_tolerance(points: float) -> float:
    """``points`` as a float, or ValueError when it is not a finite number from 0 to 100."""
    value = float(points)
    if not math.isfinite(value) or not 0.0 <= value <= 100.0:
        raise ValueError(
            f"task_tolerance is {points!r}, expected points of the task metric from 0 to 100 "
            "(0.5 = at most 0.005 of accuracy lost)"
        )
    return value


def _points(value: float) -> float:
    return round(value * 100.0, 4)


@dataclass(frozen=True)
class _Scored:
    value: float
    examples: int


class TaskGate:
    """The labelled set of one optimize run, its fp32 baseline, and the verdict per candidate.

    Attributes:
        bundle: the source bundle (its tokenizer, labels and spec score every candidate).
        examples: the labelled examples read from ``eval_set``.
        metric: ``accuracy`` or ``slot_f1``.
        tolerance: points a lossy candidate may lose.
        sha256: the evaluation set's digest (the artifact cache key takes it).
        baseline: the metric of the fp32 plain model on the CPU (graph optimizations off), the
            same reference the numeric gates compare against; set by ``start``.
        plain: the metric of plain ORT on the device; set by ``start``.
    """

    def __init__(
        self,
        bundle: Bundle,
        eval_set: Path,
        examples: Sequence[Example],
        tolerance: float,
    ) -> None:
        self.bundle = bundle
        self.eval_set = eval_set
        self.sha256 = hashlib.sha256(eval_set.read_bytes()).hexdigest()
        self.examples = list(examples)
        self.tolerance = tolerance
        self.metric = "slot_f1" if bundle.spec.task == "slots" else "accuracy"
        self.baseline = _Scored(0.0, len(self.examples))
        self.plain: _Scored | None = None

    def start(self, plain: BladeRuntime) -> None:
        """Score the fp32 reference (the baseline every step is held to) and plain ORT on the
        device (shown in the report). Run once, when the candidates are about to be judged:
        a cached artifact needs neither."""
        reference = BladeRuntime(
            self.bundle.model_path, RuntimeConfig(provider="cpu", graph_level="disabled")
        )
        got = self.score(reference)
        self.metric, self.baseline = got.metric, _Scored(got.value, got.examples)
        got = self.score(plain)
        self.plain = _Scored(got.value, got.examples)

    @classmethod
    def open(cls, bundle: Bundle, eval_set: str | Path, tolerance: float) -> TaskGate:
        """Read the labelled set against the bundle's spec and score the fp32 plain model.

        Raises:
            InvalidTestData: the set is unreadable, empty, or does not fit the bundle's task
                (unknown labels, missing inputs), or the task has no metric to gate on.
        """
        from eas_server.pipeline import ExamplesError, read_examples

        path = Path(eval_set)
        if bundle.spec.task == "embed":
            raise InvalidTestData(
                f"evaluation set {path}: an embed bundle has no labels to score; the task gate "
                "needs a classify, score or slots bundle"
            )
        try:
            examples = read_examples(path, bundle.spec)
        except ExamplesError as exc:
            raise InvalidTestData(f"evaluation set {path}: {exc}") from exc
        except OSError as exc:
            raise InvalidTestData(f"cannot read evaluation set {path}: {exc}") from exc
        if bundle.spec.task == "classify":
            # evaluate() would say so too, but only once the optimizer runs: say it up front
            known = set(bundle.labels)
            for number, example in enumerate(examples, start=1):
                if example.label not in known:
                    raise InvalidTestData(
                        f"evaluation set {path}: example {number} expects label "
                        f"{example.label!r}, which the bundle does not have (labels: "
                        f"{', '.join(bundle.labels)})"
                    )
        return cls(bundle, path, examples, tolerance)

    def score(self, runtime: BladeRuntime) -> TaskScore:
        """The task metric of ``runtime`` on the set, through the bundle's pre/post-processing.

        Raises:
            InvalidTestData: the set does not fit the bundle (``evaluate`` refused it).
        """
        from eas_server.pipeline import ExamplesError, evaluate

        try:
            return evaluate(self.bundle, runtime.run, self.examples)
        except ExamplesError as exc:
            raise InvalidTestData(f"evaluation set {self.eval_set}: {exc}") from exc

    def judge(self, tier: str, runtime: BladeRuntime) -> dict[str, Any]:
        """The task part of a pass's report entry: before/after/lost, verdict and why.

        Lossy tiers are refused when they lose more than ``tolerance`` points against the fp32
        baseline; lossless ones get ``verdict: "not gated"``.
        """
        after = self.score(runtime).value
        lost = _points(self.baseline.value) - _points(after)
        gated = tier in _LOSSY
        entry: dict[str, Any] = {
            "metric": self.metric,
            "before": self.baseline.value,
            "after": after,
            "lost_points": round(lost, 4),
            "tolerance_points": self.tolerance,
            "gated": gated,
        }
        what = f"{self.metric} {self.baseline.value:.2%} -> {after:.2%}"
        if not gated:
            entry["verdict"] = "not gated"
            entry["reason"] = f"{what}; a lossless step is held to its numeric bound"
        elif lost > self.tolerance + _EPSILON:
            entry["verdict"] = "rejected"
            entry["reason"] = (
                f"{what}: lost {lost:.2f} points, more than the {self.tolerance:g} allowed"
            )
        else:
            entry["verdict"] = "passed"
            entry["reason"] = f"{what}: lost {max(lost, 0.0):.2f} points, within {self.tolerance:g}"
        return entry

    def test_data(self, rows: int) -> tuple[dict[str, np.ndarray], str]:
        """Feeds for the numeric gates and the timings: the set's first ``rows`` texts, encoded by
        the bundle and padded to their longest row, as the pipeline processor pads a batch (real
        text rather than token ids drawn at random; padding every row to ``max_length`` would time
        shapes that serving never runs), and the report's note on them."""
        chosen = self.examples[:rows]
        columns = [[e.texts[j] for e in chosen] for j in range(len(self.bundle.spec.inputs))]
        feeds = self.bundle.encode(columns).feeds
        longest = int(next(iter(feeds.values())).shape[1])
        note = (
            f"evaluation set: its first {len(chosen)} texts, encoded by the bundle and padded to "
            f"their longest row ({longest} tokens; max_length {self.bundle.spec.max_length})"
        )
        return dict(feeds), note

    def key(self) -> dict[str, Any]:
        """What the outcome depends on beyond the model: for the artifact cache key."""
        return {"eval_set_sha256": self.sha256, "task_tolerance": self.tolerance}

    def summary(self) -> dict[str, Any]:
        """The report's ``task`` section."""
        return {
            "eval_set": str(self.eval_set),
            "eval_set_sha256": self.sha256,
            "metric": self.metric,
            "examples": self.baseline.examples,
            "tolerance_points": self.tolerance,
            "baseline": self.baseline.value,
            "plain": None if self.plain is None else self.plain.value,
            "note": (
                f"every lossy step is also judged by {self.metric} on {self.baseline.examples} "
                f"labelled examples through the bundle's own pre/post-processing; refused when "
                f"it loses more than {self.tolerance:g} points against the fp32 plain model"
            ),
        }


def numeric_only(task: str) -> dict[str, Any]:
    """The report's ``task`` section for a bundle optimized without an evaluation set."""
    return {
        "eval_set": None,
        "note": (
            f"no evaluation set: this {task} bundle was judged by the numeric gates only; "
            "pass eval_set (--eval-set FILE, JSONL of labelled examples) to gate each lossy "
            "step on the task metric too"
        ),
    }
