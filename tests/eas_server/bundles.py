"""Tiny pipeline bundles for tests: a WordPiece tokenizer over a small vocabulary (whole words in
it are one token, as with WordLevel; ``kitch ##en`` shows sub-word pieces) and an ONNX model whose
outputs are fixed functions of the token ids, so known sentences give known labels, scores and
slots. Built in the test (no downloads).

API::

    make_bundle(tmp_path, task="classify")            -> Path   # the bundle directory
    make_bundle(tmp_path, task="slots")                         # SLOT_EXAMPLES hold
    make_bundle(tmp_path, task="score", inputs=("query", "answer"), token_type_ids=True)
    make_bundle(tmp_path, task="embed", pooling="mean")         # or pooling="none": pooled in-model
    make_bundle(tmp_path, task="classify", head_width=4)        # head/labels mismatch
    make_bundle(tmp_path, omit=("tokenizer.json",))             # a bundle missing a file
    make_bundle(tmp_path, top_k=2, max_length=16)               # any other pipeline.json field

The models (``table`` below is a [vocab, width] weight indexed by token id):

- classify: ``logits[b, c] = sum_s mask[b, s] * table[ids[b, s], c]``: each keyword adds
  ``KEYWORD_LOGIT`` to its label (``CLASSIFY_KEYWORDS``); no keyword: all logits 0.
- score: one logit ``sum_s mask * (1 + token_type) * weight[ids]`` (``SCORE_WEIGHTS``); a
  ``head_width=2`` head puts the logit in column 1 and 0 in column 0.
- slots: per-token logits ``table[ids]``: a tag word (``SLOT_TAGS``) scores its tag, any other
  token ``O`` (specials and padding too).
- embed: ``table[ids]`` seeded random, ``[b, s, EMBED_DIM]`` (pooling mean/cls) or its masked
  mean ``[b, EMBED_DIM]`` computed in the model (pooling none).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from autoai.testing.models import IR_VERSION, OPSET

__all__ = [
    "CLASSIFY_EXAMPLES",
    "CLASSIFY_KEYWORDS",
    "CLASSIFY_LABELS",
    "EMBED_DIM",
    "KEYWORD_LOGIT",
    "SCORE_WEIGHTS",
    "SLOT_EXAMPLES",
    "SLOT_LABELS",
    "SLOT_TAGS",
    "SPECIALS",
    "VOCAB",
    "make_bundle",
    "make_model",
    "make_tokenizer",
    "write_examples",
]

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
"""Ids 0-3: [PAD] is 0, the pad id."""

CLASSIFY_LABELS = ("lights_on", "lights_off", "weather")
CLASSIFY_KEYWORDS = {
    "on": "lights_on",
    "off": "lights_off",
    "weather": "weather",
    "rain": "weather",
}
KEYWORD_LOGIT = 4.0

SCORE_WEIGHTS = {"yes": 3.0, "good": 1.5, "no": -3.0, "bad": -1.5}

SLOT_LABELS = ("O", "B-room", "I-room", "B-device")
SLOT_TAGS = {
    "kitchen": "B-room",
    "kitch": "B-room",
    "living": "B-room",
    "room": "I-room",
    "lights": "B-device",
    "lamp": "B-device",
    "fan": "B-device",
}

EMBED_DIM = 8

VOCAB = (
    *SPECIALS,
    "turn", "on", "off", "the", "lights", "what", "is", "weather", "will", "it", "rain",
    "today", "in", "kitchen", "living", "room", "lamp", "fan", "dim", "switch", "please",
    "yes", "no", "good", "bad", "answer", "a", "of", "and", "kitch", "##en", "!", "?", ",", ".",
)  # fmt: skip
"""The vocabulary: ``kitchenette`` is not in it (unknown), ``kitch`` + ``##en`` are."""

CLASSIFY_EXAMPLES = (
    ("turn on the lights", "lights_on"),
    ("switch the lights off", "lights_off"),
    ("will it rain today?", "weather"),
    ("what is the weather", "weather"),
)
"""Known sentences and the label the classify bundle gives them."""

SLOT_EXAMPLES: tuple[tuple[str, list[dict[str, object]]], ...] = (
    (
        "turn on the kitchen lights",
        [
            {"slot": "room", "value": "kitchen", "start": 12, "end": 19},
            {"slot": "device", "value": "lights", "start": 20, "end": 26},
        ],
    ),
    (
        "dim the living room lamp please",
        [
            {"slot": "room", "value": "living room", "start": 8, "end": 19},
            {"slot": "device", "value": "lamp", "start": 20, "end": 24},
        ],
    ),
    ("what is the weather", []),
    (
        "Kitchen, Fan!",  # lowercased by the normalizer; offsets into the original text
        [
            {"slot": "room", "value": "Kitchen", "start": 0, "end": 7},
            {"slot": "device", "value": "Fan", "start": 9, "end": 12},
        ],
    ),
)
"""Known sentences and the slots the slots bundle gives them (character offsets, end exclusive)."""


def make_tokenizer(vocab: Sequence[str] = VOCAB) -> Tokenizer:
    """A BERT-like tokenizer: lowercase, split on whitespace and punctuation, WordPiece over
    ``vocab``, ``[CLS] A [SEP]`` and ``[CLS] A [SEP] B [SEP]`` (type ids 0, then 1)."""
    ids = {token: i for i, token in enumerate(vocab)}
    tokenizer = Tokenizer(models.WordPiece(ids, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    return tokenizer


def _value(name: str, elem: int, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(shape))


def _table(task: str, vocab: Sequence[str], labels: Sequence[str], width: int) -> np.ndarray:
    table = np.zeros((len(vocab), width), dtype=np.float32)
    for i, token in enumerate(vocab):
        if task == "classify" and token in CLASSIFY_KEYWORDS:
            column = labels.index(CLASSIFY_KEYWORDS[token])
            if column < width:
                table[i, column] = KEYWORD_LOGIT
        elif task == "score":
            table[i, width - 1] = SCORE_WEIGHTS.get(token, 0.0)
        elif task == "slots":
            tag = SLOT_TAGS.get(token, "O")
            table[i, labels.index(tag) if labels.index(tag) < width else 0] = 5.0
    if task == "embed":
        table = np.random.default_rng(0).standard_normal((len(vocab), width)).astype(np.float32)
    return table


def make_model(
    path: Path,
    task: str,
    *,
    vocab: Sequence[str] = VOCAB,
    labels: Sequence[str] = (),
    width: int | None = None,
    token_type_ids: bool = False,
    pooling: str = "none",
    pad_sensitive: bool = False,
) -> Path:
    """Write the task's model (see the module docstring) to ``path``.

    Args:
        width: the head's last dim (default: one per label; score 1; embed ``EMBED_DIM``).
        token_type_ids: the model also takes ``token_type_ids`` (score: second-segment tokens
            count double).
        pooling: embed: ``none`` pools in the model (output ``[b, d]``), else ``[b, s, d]``.
        pad_sensitive: classify/score: sum over every position, mask ignored, and ``[PAD]``
            adds 1 to the first logit: outputs change with padding (the onnx probe sees it).
    """
    default = {"classify": len(labels), "slots": len(labels), "score": 1, "embed": EMBED_DIM}
    width = default[task] if width is None else width
    table = _table(task, vocab, labels, width)
    if pad_sensitive:
        table[0, 0] = 1.0
    inits = [
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
    ]
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["tok"], axis=0),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
    ]
    inputs = [
        _value("input_ids", TensorProto.INT64, ["batch", "seq"]),
        _value("attention_mask", TensorProto.INT64, ["batch", "seq"]),
    ]
    weight = "mask3"
    if token_type_ids:
        inputs.append(_value("token_type_ids", TensorProto.INT64, ["batch", "seq"]))
        nodes += [
            helper.make_node("Cast", ["token_type_ids"], ["typef"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["typef", "one"], ["typew"]),
            helper.make_node("Unsqueeze", ["typew", "axis2"], ["type3"]),
            helper.make_node("Mul", ["mask3", "type3"], ["weight3"]),
        ]
        weight = "weight3"
    if task in ("classify", "score"):
        name = "logits"
        nodes += [
            helper.make_node("Mul", ["tok", "one" if pad_sensitive else weight], ["weighted"]),
            helper.make_node("ReduceSum", ["weighted", "axis1"], [name], keepdims=0),
        ]
        outputs = [_value(name, TensorProto.FLOAT, ["batch", width])]
    elif task == "slots":
        nodes.append(helper.make_node("Identity", ["tok"], ["logits"]))
        outputs = [_value("logits", TensorProto.FLOAT, ["batch", "seq", width])]
    elif pooling != "none":
        nodes.append(helper.make_node("Identity", ["tok"], ["last_hidden_state"]))
        outputs = [_value("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", width])]
    else:
        nodes += [
            helper.make_node("Mul", ["tok", "mask3"], ["weighted"]),
            helper.make_node("ReduceSum", ["weighted", "axis1"], ["summed"], keepdims=0),
            helper.make_node("ReduceSum", ["mask3", "axis1"], ["count"], keepdims=0),
            helper.make_node("Max", ["count", "one"], ["safe"]),
            helper.make_node("Div", ["summed", "safe"], ["sentence_embedding"]),
        ]
        outputs = [_value("sentence_embedding", TensorProto.FLOAT, ["batch", width])]
    used = {name for node in nodes for name in node.input}
    inits = [init for init in inits if init.name in used]
    graph = helper.make_graph(nodes, f"pipeline_{task}", inputs, outputs, inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_bundle(
    tmp_path: Path,
    task: str = "classify",
    *,
    name: str | None = None,
    labels: Sequence[str] | None = None,
    inputs: Sequence[str] = ("text",),
    token_type_ids: bool = False,
    head_width: int | None = None,
    vocab: Sequence[str] = VOCAB,
    pad_sensitive: bool = False,
    omit: Sequence[str] = (),
    spec: Mapping[str, Any] | None = None,
    **fields: Any,
) -> Path:
    """Write a bundle directory and return it.

    Args:
        tmp_path: where to create it (``tmp_path / name``).
        task: classify, score, embed or slots.
        name: the directory name (default: the task).
        labels: the label list (default ``CLASSIFY_LABELS`` / ``SLOT_LABELS``; none otherwise).
        inputs: the spec's text inputs (two for pairs).
        token_type_ids: the model takes token_type_ids.
        head_width: the model head's width, to build a head that does not match the labels.
        vocab: the tokenizer's vocabulary (the model's table has one row per token).
        pad_sensitive: a model whose outputs change with padding (see ``make_model``).
        omit: files not to write (``tokenizer.json``, ``labels.txt``, ``model.onnx``).
        spec: a whole ``pipeline.json`` document to write instead of the one built here.
        fields: more ``pipeline.json`` fields (``max_length``, ``top_k``, ``pooling``, ...).
    """
    root = tmp_path / (name or task)
    root.mkdir(parents=True)
    if labels is None:
        labels = {"classify": CLASSIFY_LABELS, "slots": SLOT_LABELS}.get(task, ())
    doc: dict[str, Any] = {"task": task, "inputs": list(inputs), **fields}
    if not labels:
        doc.setdefault("labels", None)
    document = dict(spec) if spec is not None else doc
    files: dict[str, Callable[[Path], object]] = {
        "pipeline.json": lambda p: p.write_text(json.dumps(document, indent=2)),
        "tokenizer.json": lambda p: make_tokenizer(vocab).save(str(p)),
        "labels.txt": lambda p: p.write_text("".join(f"{label}\n" for label in labels)),
        "model.onnx": lambda p: make_model(
            p,
            task,
            vocab=vocab,
            labels=labels,
            width=head_width,
            token_type_ids=token_type_ids,
            pooling=str(fields.get("pooling", "none")),
            pad_sensitive=pad_sensitive,
        ),
    }
    for filename, write in files.items():
        if filename in omit or (filename == "labels.txt" and not labels):
            continue
        write(root / filename)
    return root


def write_examples(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """An evaluation set: one JSON object per line."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
