"""A bundle judged by its task on labelled examples: accuracy for classify and score, slot F1 for
slots. Blade's task gate runs this on each candidate's ``run_fn`` (the metric must not drop).

Evaluation sets are JSONL, one object per line, keyed by the spec's input names::

    {"text": "turn on the kitchen lights", "label": "lights_on"}             classify
    {"text": "how tall is it", "text_pair": "it is 3 m tall", "label": 1}     score (0/1)
    {"text": "lights in the kitchen", "slots": [{"slot": "room", "value": "kitchen"}]}   slots
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ._bundle import Bundle, RunFn
from ._errors import ExamplesError
from ._spec import PipelineSpec

__all__ = ["Example", "TaskScore", "evaluate", "read_examples"]


@dataclass(frozen=True)
class Example:
    """One labelled example.

    Attributes:
        texts: one text per spec input (two for pairs).
        label: classify: the expected label; score: 0 or 1.
        slots: slots: the expected ``(slot, value)`` spans.
    """

    texts: tuple[str, ...]
    label: str | int | None = None
    slots: tuple[tuple[str, str], ...] | None = None


class TaskScore(BaseModel):
    """The task metric of one evaluation (what blade's report shows per step).

    Attributes:
        metric: ``accuracy`` (classify, score) or ``slot_f1`` (micro F1 of (slot, value) spans).
        value: 0..1.
        examples: how many examples it was computed on.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    metric: Literal["accuracy", "slot_f1"]
    value: float = Field(ge=0.0, le=1.0)
    examples: int = Field(ge=1)


def _field_text(doc: dict[str, object], key: str, where: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str):
        raise ExamplesError(f"{where}: expected {key!r} to be a string, got {value!r}")
    return value


def _example(doc: object, spec: PipelineSpec, where: str) -> Example:
    if not isinstance(doc, dict):
        raise ExamplesError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    texts = tuple(_field_text(doc, name, where) for name in spec.inputs)
    if spec.task == "classify":
        label = doc.get("label")
        if not isinstance(label, str):
            raise ExamplesError(f"{where}: expected 'label' to be a label name, got {label!r}")
        return Example(texts, label=label)
    if spec.task == "score":
        label = doc.get("label")
        if isinstance(label, bool):
            label = int(label)
        if label not in (0, 1) or isinstance(label, float):
            raise ExamplesError(f"{where}: expected 'label' to be 0 or 1, got {label!r}")
        return Example(texts, label=int(label))
    raw = doc.get("slots")
    if not isinstance(raw, list):
        raise ExamplesError(f"{where}: expected 'slots' to be a list of {{slot, value}}")
    spans = []
    for item in raw:
        if not (
            isinstance(item, dict)
            and isinstance(item.get("slot"), str)
            and isinstance(item.get("value"), str)
        ):
            raise ExamplesError(
                f"{where}: each slot must be {{'slot': str, 'value': str}}, got {item!r}"
            )
        spans.append((item["slot"], item["value"]))
    return Example(texts, slots=tuple(spans))


def read_examples(path: Path, spec: PipelineSpec) -> list[Example]:
    """Read a JSONL evaluation set for ``spec``'s task (blank lines are skipped).

    Raises:
        ExamplesError: unreadable file, a line that is not JSON or lacks the task's keys, an
            embed spec (no task metric), or no examples at all.
    """
    if spec.task == "embed":
        raise ExamplesError("embed bundles have no task metric to evaluate (no labels)")
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ExamplesError(f"cannot read the evaluation set {path}: {exc}") from exc
    examples = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ExamplesError(f"{where} is not JSON: {exc}") from None
        examples.append(_example(doc, spec, where))
    if not examples:
        raise ExamplesError(f"{path} holds no examples")
    return examples


def _slot_counts(raw: bytes) -> Counter[tuple[str, str]]:
    return Counter((s["slot"], s["value"]) for s in json.loads(raw))


def evaluate(
    bundle: Bundle, run_fn: RunFn, examples: Sequence[Example], *, batch_size: int = 32
) -> TaskScore:
    """The task metric of ``bundle`` run by ``run_fn`` on ``examples``.

    classify: share of examples whose top label is the expected one; score: share whose
    ``score >= spec.threshold`` equals the 0/1 label; slots: micro F1 of predicted against
    expected ``(slot, value)`` spans (1.0 when both are empty everywhere).

    Raises:
        ExamplesError: no examples, an embed bundle, an example label the bundle does not know,
            or an example with the wrong number of texts.
    """
    spec = bundle.spec
    if spec.task == "embed":
        raise ExamplesError("embed bundles have no task metric to evaluate (no labels)")
    if not examples:
        raise ExamplesError("no examples to evaluate on")
    known = set(bundle.labels)
    for i, example in enumerate(examples):
        if len(example.texts) != len(spec.inputs):
            raise ExamplesError(
                f"example {i} has {len(example.texts)} text(s); the bundle takes "
                f"{len(spec.inputs)} ({', '.join(spec.inputs)})"
            )
        if spec.task == "classify" and example.label not in known:
            raise ExamplesError(
                f"example {i} expects label {example.label!r}, which the bundle does not have "
                f"(labels: {', '.join(bundle.labels)})"
            )
    correct = 0
    true_pos = predicted = expected = 0
    for lo in range(0, len(examples), batch_size):
        chunk = examples[lo : lo + batch_size]
        columns = [[e.texts[j] for e in chunk] for j in range(len(spec.inputs))]
        out = bundle.run(columns, run_fn)
        for row, example in enumerate(chunk):
            if spec.task == "classify":
                correct += out["label"][row].decode("utf-8") == example.label
            elif spec.task == "score":
                correct += int(float(out["score"][row]) >= spec.threshold) == example.label
            else:
                got = _slot_counts(out["slots"][row])
                want = Counter(example.slots or ())
                true_pos += sum((got & want).values())
                predicted += sum(got.values())
                expected += sum(want.values())
    if spec.task == "slots":
        total = predicted + expected
        value = 1.0 if total == 0 else 2.0 * true_pos / total
        return TaskScore(metric="slot_f1", value=value, examples=len(examples))
    return TaskScore(metric="accuracy", value=correct / len(examples), examples=len(examples))
