"""Classify bundles whose int8 step loses accuracy, or keeps it, by construction (for the tests of
blade's task gate).

The model: token embeddings ``table[ids]`` (``[b, s, 4]``), their masked mean ``pooled``
(``[b, 4]``), then a MatMul head ``pooled @ W`` (``[4, 3]``, one column per label of
``CLASSIFY_LABELS``). Feature 1, 2, 3 is 1 for the keywords of ``lights_on``, ``lights_off``,
``weather`` (``CLASSIFY_KEYWORDS``) and 0 otherwise; ``W`` maps feature k to label k - 1 with
weight ``HEAD_WEIGHT``. So a sentence's label is its keyword's, and its logit is the keyword's
share of the sentence's tokens times ``HEAD_WEIGHT``: 1/6 for ``turn on the lights``
(``[CLS] turn on the lights [SEP]``), about 2/3 for keyword-dense rows like ``on on on on``.

The MatMul is the only node dynamic int8 quantizes; ORT quantizes its activation ``pooled`` per
tensor to uint8, with a step of ``max(pooled) / 255`` over the batch.

- ``lossy=True``: feature 0 is ``OUTLIER`` (200) for every token, a constant the head ignores
  (row 0 of ``W`` is 0): an activation outlier, as in the outlier features of large
  transformers. It sets the int8 step to 200/255 = 0.78, and a keyword's share of a real sentence
  (1/6 to 1/3) rounds to 0: int8 gives every such sentence logits (0, 0, 0), so the top label is
  always ``lights_on``. A keyword-dense row (share 2/3 or more) rounds to one whole step and keeps
  its label; this is why the numeric gate, fed such rows, passes (top-1 agreement 100 %, logits'
  cosine 1) while accuracy on real sentences collapses.
- ``lossy=False``: no outlier (feature 0 is 0): the step is ``max share / 255``, far below any
  keyword's share, and int8 keeps every label.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from autoai.testing.models import IR_VERSION, OPSET
from tests.eas_server.bundles import (
    CLASSIFY_KEYWORDS,
    CLASSIFY_LABELS,
    VOCAB,
    make_bundle,
    write_examples,
)

__all__ = [
    "DENSE_ROWS",
    "HEAD_WEIGHT",
    "OUTLIER",
    "SENTENCES",
    "eval_rows",
    "keyword_bundle",
    "keyword_model",
    "numeric_test_data",
    "write_eval_set",
]

OUTLIER = 200.0
HEAD_WEIGHT = 3.0

SENTENCES = {
    "lights_on": ("turn on the lights", "please turn the lamp on", "switch on the fan"),
    "lights_off": ("turn off the lights", "switch the lamp off", "turn the fan off please"),
    "weather": ("what is the weather", "will it rain today?", "what is the weather today"),
}
"""Real sentences, one keyword each: its share of the tokens is 1/7 to 1/5."""

DENSE_ROWS = ("on on on on", "off off off off", "weather weather rain rain")
"""Keyword-dense rows (share 2/3 or more): the numeric gate's test data."""


def keyword_model(path: Path, *, lossy: bool, vocab: Sequence[str] = VOCAB) -> Path:
    """Write the model of the module docstring to ``path``."""
    table = np.zeros((len(vocab), 4), dtype=np.float32)
    if lossy:
        table[:, 0] = OUTLIER
    for i, token in enumerate(vocab):
        if token in CLASSIFY_KEYWORDS:
            table[i, 1 + CLASSIFY_LABELS.index(CLASSIFY_KEYWORDS[token])] = 1.0
    weight = np.zeros((4, len(CLASSIFY_LABELS)), dtype=np.float32)
    for k in range(len(CLASSIFY_LABELS)):
        weight[1 + k, k] = HEAD_WEIGHT
    inits = [
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(weight, "W"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
    ]
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["tok"], axis=0),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["tok", "mask3"], ["weighted"]),
        helper.make_node("ReduceSum", ["weighted", "axis1"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "axis1"], ["count"], keepdims=0),
        helper.make_node("Max", ["count", "one"], ["safe"]),
        helper.make_node("Div", ["summed", "safe"], ["pooled"]),
        helper.make_node("MatMul", ["pooled", "W"], ["logits"]),
    ]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
    ]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(CLASSIFY_LABELS)])
    ]
    graph = helper.make_graph(nodes, "keyword_head", inputs, outputs, inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def keyword_bundle(tmp_path: Path, *, lossy: bool, name: str | None = None) -> Path:
    """A classify bundle (``tests.eas_server.bundles``' tokenizer and labels) with the model of
    the module docstring."""
    root = make_bundle(tmp_path, "classify", name=name or ("lossy" if lossy else "keeps"))
    keyword_model(root / "model.onnx", lossy=lossy)
    return root


def eval_rows(per_label: int = 3) -> list[dict[str, str]]:
    """A labelled set: ``per_label`` sentences of each label (cycling through ``SENTENCES``)."""
    return [
        {"text": texts[i % len(texts)], "label": label}
        for label, texts in SENTENCES.items()
        for i in range(per_label)
    ]


def write_eval_set(path: Path, rows: Sequence[dict[str, str]] | None = None) -> Path:
    """Write ``rows`` (default ``eval_rows()``) as a JSONL evaluation set."""
    return write_examples(path, rows if rows is not None else eval_rows())


def numeric_test_data(bundle: Path, rows: int = 8) -> dict[str, np.ndarray]:
    """Feeds for the numeric gate: ``DENSE_ROWS`` encoded by the bundle, repeated to ``rows``."""
    from eas_server.pipeline import load_bundle

    loaded = load_bundle(bundle)
    texts = [DENSE_ROWS[i % len(DENSE_ROWS)] for i in range(rows)]
    return loaded.encode([texts]).feeds
