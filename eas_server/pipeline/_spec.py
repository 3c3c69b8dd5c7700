"""``pipeline.json``: what a bundle's text goes through (tokenization) and what comes out (the
post-processing of the model's head). One frozen model, read by eas-server, the control plane and
blade alike, so that the three agree on what a bundle means."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "BUNDLE_SPEC",
    "OUTPUT_NAMES",
    "TASKS",
    "PipelineSpec",
    "Task",
]

BUNDLE_SPEC = "pipeline.json"
"""The file that makes a directory a bundle."""

Task = Literal["classify", "embed", "score", "slots"]
TASKS: tuple[Task, ...] = ("classify", "embed", "score", "slots")
LABELLED: frozenset[str] = frozenset({"classify", "slots"})
"""Tasks whose head has one position per label, so a label list is required."""

OUTPUT_NAMES: dict[str, tuple[str, ...]] = {
    "classify": ("label", "score", "labels", "scores"),
    "score": ("score",),
    "embed": ("embedding",),
    "slots": ("slots",),
}
"""Every external output name a task may produce (``labels``/``scores`` only with top_k > 1)."""

_INPUT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")


def _bundle_file(value: str, what: str) -> str:
    """A path inside the bundle: relative, without ``..``, so a spec cannot reach out of it."""
    path = PurePosixPath(value)
    if not value or path.is_absolute() or ".." in path.parts or "\\" in value:
        raise ValueError(
            f"{what} must name a file inside the bundle (a relative path without '..'), "
            f"got {value!r}"
        )
    return value


class PipelineSpec(BaseModel):
    """The content of ``pipeline.json``.

    Attributes:
        schema_version: 1.
        task: ``classify`` (softmax, top label), ``embed`` (pooled, normalized vector),
            ``score`` (sigmoid of one logit, or softmax class 1 of two), ``slots`` (BIO tags
            merged into character spans).
        inputs: the external BYTES inputs: one text, or two for pairs (query, answer).
        max_length: tokens per row including special tokens; longer input is truncated.
        truncation: the ``tokenizers`` truncation strategy for pairs.
        model: the ONNX file, or a blade artifact directory, inside the bundle.
        tokenizer: the Hugging Face ``tokenizer.json`` inside the bundle.
        labels: the label list (one per line); required for classify and slots.
        output: the graph output to read (None: the graph's first output).
        top_k: classify: also return the k best labels and scores when > 1.
        pooling: embed: how a token-level output ``[b, s, h]`` is pooled (``none``: the model
            pools already and outputs ``[b, h]``).
        normalize: embed: L2-normalize the vector.
        threshold: score: the cut for a 0/1 decision in evaluation.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    task: Task
    inputs: tuple[str, ...] = ("text",)
    max_length: int = Field(default=128, ge=2, le=65536)
    truncation: Literal["longest_first", "only_first", "only_second"] = "longest_first"
    model: str = "model.onnx"
    tokenizer: str = "tokenizer.json"
    labels: str | None = "labels.txt"
    output: str | None = None
    top_k: int = Field(default=1, ge=1)
    pooling: Literal["mean", "cls", "none"] = "none"
    normalize: bool = True
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)

    @field_validator("inputs")
    @classmethod
    def _check_inputs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) not in (1, 2):
            raise ValueError(
                f"inputs must name 1 text input, or 2 for pairs (query, answer); got {len(value)}"
            )
        if len(set(value)) != len(value):
            raise ValueError(f"inputs must be distinct names, got {list(value)}")
        for name in value:
            if not _INPUT_NAME.match(name):
                raise ValueError(
                    f"input name {name!r} is not valid: a letter or '_' then letters, digits, "
                    "'_', '.', '-' (at most 64)"
                )
        return value

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: str) -> str:
        return _bundle_file(value, "model")

    @field_validator("tokenizer")
    @classmethod
    def _check_tokenizer(cls, value: str) -> str:
        return _bundle_file(value, "tokenizer")

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, value: str | None) -> str | None:
        return None if value is None else _bundle_file(value, "labels")

    @model_validator(mode="after")
    def _check_task(self) -> PipelineSpec:
        task = self.task
        if task in LABELLED and self.labels is None:
            raise ValueError(f"task {task!r} needs a label list: set labels (e.g. 'labels.txt')")
        if self.truncation == "only_second" and len(self.inputs) != 2:
            raise ValueError("truncation 'only_second' needs two inputs (a pair)")
        if task == "slots" and len(self.inputs) != 1:
            raise ValueError("task 'slots' tags one text: inputs must name exactly one input")
        if self.top_k > 1 and task != "classify":
            raise ValueError(f"top_k applies to task 'classify' only, not {task!r}")
        if self.pooling != "none" and task != "embed":
            raise ValueError(f"pooling applies to task 'embed' only, not {task!r}")
        clash = set(self.inputs) & set(OUTPUT_NAMES[task])
        if clash:
            raise ValueError(
                f"input name(s) {sorted(clash)} clash with the {task} outputs "
                f"{list(OUTPUT_NAMES[task])}: rename the inputs"
            )
        return self

    @property
    def labelled(self) -> bool:
        """Whether the task reads a label list (classify, slots)."""
        return self.task in LABELLED
