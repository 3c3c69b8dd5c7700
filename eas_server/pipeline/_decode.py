"""Post-processing of a model's head into the external outputs. Pure numpy, one function per task;
``Bundle.decode`` picks the head tensor and calls these.

Every function takes the whole batch and returns arrays with the batch dim first: BYTES outputs
as object arrays of ``bytes`` (the OIP codec's form), scores as float32.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Slot",
    "classify",
    "embed",
    "merge_bio",
    "score",
    "sigmoid",
    "slots",
    "slots_json",
    "softmax",
]


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax along ``axis``, shifted by the max so large logits do not overflow."""
    z = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)  # type: ignore[no-any-return]


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-x) without overflow for large |x|."""
    return np.exp(-np.logaddexp(0.0, -x))  # type: ignore[no-any-return]


def _bytes(values: Sequence[str] | np.ndarray) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = [v.encode("utf-8") for v in values]
    return out


def classify(logits: np.ndarray, labels: Sequence[str], top_k: int = 1) -> dict[str, np.ndarray]:
    """Softmax over ``[n, C]`` logits: ``label`` (the best, BYTES [n]) and ``score`` (its
    probability, FP32 [n]); with ``top_k`` > 1 also ``labels`` (BYTES [n, k]) and ``scores``
    (FP32 [n, k]), best first."""
    probs = softmax(logits.astype(np.float32, copy=False), axis=-1)
    best = np.argmax(probs, axis=-1)
    names = np.array(labels, dtype=object)
    out = {
        "label": _bytes(names[best]),
        "score": probs[np.arange(len(best)), best].astype(np.float32),
    }
    if top_k > 1:
        k = min(top_k, probs.shape[-1])
        order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
        top = np.take_along_axis(probs, order, axis=-1).astype(np.float32)
        encoded = np.array([label.encode("utf-8") for label in labels], dtype=object)
        out["labels"] = encoded[order]
        out["scores"] = top
    return out


def score(head: np.ndarray) -> dict[str, np.ndarray]:
    """``score`` FP32 [n]: the sigmoid of a single logit (``[n]`` or ``[n, 1]``), or the softmax
    probability of class 1 of a two-wide head (``[n, 2]``)."""
    x = head.astype(np.float32, copy=False)
    if x.ndim == 2 and x.shape[1] == 2:
        return {"score": softmax(x, axis=-1)[:, 1].astype(np.float32)}
    return {"score": sigmoid(x.reshape(x.shape[0])).astype(np.float32)}


def embed(
    head: np.ndarray, mask: np.ndarray, pooling: str = "none", normalize: bool = True
) -> dict[str, np.ndarray]:
    """``embedding`` FP32 [n, d]: ``head`` as is (``none``: ``[n, d]``), or pooled from
    ``[n, s, d]``: ``mean`` over the positions the attention ``mask`` keeps, ``cls`` the first
    position. ``normalize``: divided by its L2 norm (a zero vector stays zero)."""
    x = head.astype(np.float32, copy=False)
    if pooling == "mean":
        weights = mask.astype(np.float32)[:, : x.shape[1], None]
        x = (x * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)
    elif pooling == "cls":
        x = x[:, 0, :]
    if normalize:
        norms = np.linalg.norm(x, axis=-1, keepdims=True)
        x = x / np.maximum(norms, 1e-12)
    return {"embedding": np.ascontiguousarray(x, dtype=np.float32)}


@dataclass(frozen=True, slots=True)
class Slot:
    """One slot span: its name, the text it covers and where (character offsets, end exclusive)."""

    slot: str
    value: str
    start: int
    end: int


def merge_bio(
    tags: Sequence[str | None],
    words: Sequence[int | None],
    offsets: Sequence[tuple[int, int]],
    text: str,
) -> list[Slot]:
    """Merge per-token BIO tags into spans of ``text``.

    A word split into several tokens takes the tag of its first token (its other tokens only
    extend it). ``B-x`` starts a span, ``I-x`` continues a span of ``x`` and starts one after
    anything else (the lenient reading of seqeval's default), ``O`` ends it. Tokens whose tag or
    word is None (special tokens, padding) end a span too.

    Args:
        tags: per token, its BIO tag, or None for special tokens and padding.
        words: per token, the index of its word (the tokenizer's ``word_ids``).
        offsets: per token, its ``(start, end)`` characters in ``text``.
        text: the text the offsets point into.
    """
    spans: list[Slot] = []
    kind: str | None = None
    start = end = 0
    previous_word: int | None = None

    def close() -> None:
        nonlocal kind
        if kind is not None:
            spans.append(Slot(kind, text[start:end], start, end))
        kind = None

    for tag, word, (lo, hi) in zip(tags, words, offsets, strict=True):
        if tag is None or word is None:
            close()
            previous_word = None
            continue
        if word == previous_word:  # a later piece of the same word: extends whatever it is in
            if kind is not None:
                end = max(end, hi)
            continue
        previous_word = word
        if tag.startswith("B-"):
            close()
            kind, start, end = tag[2:], lo, hi
        elif tag.startswith("I-") and kind == tag[2:]:
            end = max(end, hi)
        elif tag.startswith("I-"):
            close()
            kind, start, end = tag[2:], lo, hi
        else:
            close()
    close()
    return spans


def slots_json(spans: Sequence[Slot]) -> bytes:
    """The ``slots`` output of one row: a JSON array of ``{"slot", "value", "start", "end"}``."""
    doc = [{"slot": s.slot, "value": s.value, "start": s.start, "end": s.end} for s in spans]
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


def slots(
    logits: np.ndarray,
    labels: Sequence[str],
    lengths: np.ndarray,
    special: np.ndarray,
    words: Sequence[Sequence[int | None]],
    offsets: Sequence[Sequence[tuple[int, int]]],
    texts: Sequence[str],
) -> dict[str, np.ndarray]:
    """``slots`` BYTES [n]: per row, the argmax tag of each token (``[n, s, C]`` logits) merged
    into spans by ``merge_bio`` and written as JSON (``slots_json``).

    Args:
        logits: per-token label scores, the sequence as long as the padded feed.
        labels: the BIO tags, one per logit column.
        lengths: real tokens per row (the rest is padding).
        special: per row and token, True for special tokens ([CLS], [SEP]).
        words, offsets: per row, the tokenizer's word ids and character offsets.
        texts: per row, the text.
    """
    best = np.argmax(logits, axis=-1)
    out = np.empty(len(texts), dtype=object)
    for row, text in enumerate(texts):
        n = int(lengths[row])
        tags: list[str | None] = [
            None if special[row, i] else labels[int(best[row, i])] for i in range(n)
        ]
        out[row] = slots_json(merge_bio(tags, words[row][:n], offsets[row][:n], text))
    return {"slots": out}
