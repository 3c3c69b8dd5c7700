"""A bundle: a model with its tokenizer, labels and ``pipeline.json``, loaded and checked once, then
used to encode batches of text into the model's feeds and decode its outputs.

```
BUNDLE/
  model.onnx       the model: input_ids, attention_mask[, token_type_ids] INT64 [-1, -1]
  tokenizer.json   Hugging Face tokenizers format
  labels.txt       one label per line (classify: classes; slots: BIO tags); none for embed/score
  pipeline.json    the PipelineSpec
```
Pure (``tokenizers`` + numpy): the model is reached only through a ``run_fn`` passed in.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from pydantic import ValidationError
from tokenizers import Encoding, Tokenizer

from .._errors import InvalidInput, ProcessorError
from .._tensors import TensorSpec
from . import _decode
from ._errors import BundleError
from ._graph import is_blade_dir, read_graph
from ._spec import BUNDLE_SPEC, PipelineSpec

__all__ = [
    "MODEL_INPUTS",
    "Bundle",
    "Encoded",
    "RunFn",
    "inspect_bundle",
    "is_bundle",
    "load_bundle",
    "read_bundle",
    "spec_json",
]

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
"""The model inputs a pipeline can feed; a model takes input_ids and any of the others."""

RunFn = Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]]
"""Runs the model on feeds (name -> int64 [n, L]) and returns its outputs by name."""


def is_bundle(path: str | Path) -> bool:
    """A directory holding ``pipeline.json``."""
    p = Path(path)
    return p.is_dir() and (p / BUNDLE_SPEC).is_file()


@dataclass(frozen=True)
class Encoded:
    """A batch of text as the model takes it.

    Attributes:
        feeds: ``input_ids``/``attention_mask``/``token_type_ids`` int64 ``[n, L]`` (only the
            ones the model takes), right-padded with the pad id (mask 0).
        lengths: real tokens per row, int64 ``[n]``.
        special: per row and position, True for special tokens ([CLS], [SEP]) and padding.
        offsets: per row, per real token, its ``(start, end)`` characters in the first text
            (filled for ``slots`` bundles only; the fast path skips offsets otherwise).
        words: per row, per real token, its word index (``slots`` only, as ``offsets``).
        texts: the texts, one column per spec input.
    """

    feeds: dict[str, np.ndarray]
    lengths: np.ndarray
    special: np.ndarray
    offsets: list[list[tuple[int, int]]] = field(default_factory=list)
    words: list[list[int | None]] = field(default_factory=list)
    texts: tuple[tuple[str, ...], ...] = ()

    @property
    def rows(self) -> int:
        return int(self.lengths.shape[0])


@dataclass(frozen=True)
class Bundle:
    """A loaded, checked bundle (``load_bundle``).

    Attributes:
        root: the bundle directory.
        spec: its ``pipeline.json``.
        tokenizer: the tokenizer, truncating to ``spec.max_length``, padding off (``encode``
            pads); shared by threads (encoding only reads it).
        labels: the label list (empty for embed and score).
        model_path: the ONNX file or the blade artifact directory.
        model_inputs: the model's inputs, a subset of ``MODEL_INPUTS`` with ``input_ids``.
        model_outputs: the model's outputs (name -> full shape), when known; the first is the
            default head.
        pad_id: the id padding is filled with (the tokenizer's own, else 0).
    """

    root: Path
    spec: PipelineSpec
    tokenizer: Tokenizer
    labels: tuple[str, ...]
    model_path: Path
    model_inputs: tuple[str, ...] = ("input_ids", "attention_mask")
    model_outputs: Mapping[str, tuple[int, ...]] | None = None
    pad_id: int = 0

    @property
    def is_blade(self) -> bool:
        """The model is a blade artifact directory (served by the ``blade`` processor)."""
        return is_blade_dir(self.model_path)

    @property
    def head(self) -> str | None:
        """The graph output decoded: ``spec.output``, else the first output when known."""
        if self.spec.output is not None:
            return self.spec.output
        if self.model_outputs:
            return next(iter(self.model_outputs))
        return None

    def bind(
        self,
        model_inputs: Iterable[str],
        model_outputs: Mapping[str, tuple[int, ...]] | None = None,
    ) -> Bundle:
        """This bundle for a model with these inputs (names) and outputs (name -> full shape).

        Raises:
            BundleError: an input a pipeline cannot feed, or (outputs given) a head that does
                not fit the task or the labels.
        """
        inputs = _check_inputs(model_inputs, self.model_path)
        outputs = None if model_outputs is None else {k: tuple(v) for k, v in model_outputs.items()}
        if outputs is not None:
            _check_head(self.spec, self.labels, outputs, self.model_path)
        return replace(self, model_inputs=inputs, model_outputs=outputs)

    def signature(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """The external signature (full shapes, batch dim first): what clients send and get."""
        spec = self.spec
        inputs = [TensorSpec(name, "BYTES", (-1,)) for name in spec.inputs]
        outputs: list[TensorSpec]
        if spec.task == "classify":
            outputs = [TensorSpec("label", "BYTES", (-1,)), TensorSpec("score", "FP32", (-1,))]
            if spec.top_k > 1:
                k = min(spec.top_k, len(self.labels))
                outputs += [
                    TensorSpec("labels", "BYTES", (-1, k)),
                    TensorSpec("scores", "FP32", (-1, k)),
                ]
        elif spec.task == "score":
            outputs = [TensorSpec("score", "FP32", (-1,))]
        elif spec.task == "embed":
            shape = (self.model_outputs or {}).get(self.head or "", ())
            width = shape[-1] if shape else -1
            outputs = [TensorSpec("embedding", "FP32", (-1, width))]
        else:
            outputs = [TensorSpec("slots", "BYTES", (-1,))]
        return inputs, outputs

    def encode(self, texts: Sequence[Sequence[str]], *, pad_to: int | None = None) -> Encoded:
        """Tokenize a batch at once (``Tokenizer.encode_batch``, in Rust), truncated to
        ``spec.max_length`` and padded to the longest row (at least ``pad_to``).

        Args:
            texts: one column per spec input (two for pairs), of equal length.
            pad_to: a length to pad to at least (e.g. a blade bucket); longer rows are kept.

        Raises:
            InvalidInput: wrong number of columns, columns of different lengths, a non-str
                element, or text the tokenizer refuses (a pair it cannot truncate).
        """
        columns = self._columns(texts)
        rows = len(columns[0])
        batch: list[str] | list[tuple[str, str]] = (
            list(columns[0])
            if len(columns) == 1
            else list(zip(columns[0], columns[1], strict=True))
        )
        slots = self.spec.task == "slots"
        try:
            if slots:
                encodings = self.tokenizer.encode_batch(batch)
            else:  # no offsets needed: the fast path skips computing them
                encodings = self.tokenizer.encode_batch_fast(batch)
        except Exception as exc:  # tokenizers raises plain Exception
            raise InvalidInput(f"cannot tokenize the text: {exc}") from exc
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=rows)
        width = max(int(lengths.max(initial=0)), pad_to or 0, 1)
        feeds = self._feeds(encodings, lengths, width)
        special = np.ones((rows, width), dtype=bool)
        for i, e in enumerate(encodings):
            special[i, : lengths[i]] = np.asarray(e.special_tokens_mask, dtype=bool)
        return Encoded(
            feeds=feeds,
            lengths=lengths,
            special=special,
            offsets=[list(e.offsets) for e in encodings] if slots else [],
            words=[list(e.word_ids) for e in encodings] if slots else [],
            texts=tuple(tuple(c) for c in columns),
        )

    def _columns(self, texts: Sequence[Sequence[str]]) -> list[Sequence[str]]:
        names = self.spec.inputs
        if len(texts) != len(names):
            raise InvalidInput(
                f"expected {len(names)} text column(s) ({', '.join(names)}), got {len(texts)}"
            )
        columns = list(texts)
        if len({len(c) for c in columns}) > 1:
            sizes = ", ".join(f"{n}: {len(c)}" for n, c in zip(names, columns, strict=True))
            raise InvalidInput(f"the inputs must have the same number of rows, got {sizes}")
        for name, column in zip(names, columns, strict=True):
            for i, text in enumerate(column):
                if not isinstance(text, str):
                    raise InvalidInput(
                        f"input {name!r} row {i}: expected text, got {type(text).__name__}"
                    )
        return columns

    def _feeds(
        self, encodings: Sequence[Encoding], lengths: np.ndarray, width: int
    ) -> dict[str, np.ndarray]:
        rows = len(encodings)
        ids = np.full((rows, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((rows, width), dtype=np.int64)
        types = (
            np.zeros((rows, width), dtype=np.int64)
            if "token_type_ids" in self.model_inputs
            else None
        )
        for i, e in enumerate(encodings):
            n = int(lengths[i])
            ids[i, :n] = e.ids
            mask[i, :n] = 1
            if types is not None:
                types[i, :n] = e.type_ids
        all_feeds = {"input_ids": ids, "attention_mask": mask}
        if types is not None:
            all_feeds["token_type_ids"] = types
        return {name: all_feeds[name] for name in self.model_inputs}

    def decode(self, outputs: Mapping[str, np.ndarray], encoded: Encoded) -> dict[str, np.ndarray]:
        """The external outputs from the model's outputs on ``encoded``.

        Raises:
            ProcessorError: the head output is missing or its shape does not fit the task.
        """
        name = self.head or next(iter(outputs), None)
        if name is None or name not in outputs:
            raise ProcessorError(
                f"the model returned no output {name!r} (got {sorted(outputs)}); "
                "pipeline.json's output names the head to decode"
            )
        head = np.asarray(outputs[name])
        spec = self.spec
        _check_runtime_shape(spec.task, name, head, len(self.labels), encoded.rows, spec.pooling)
        if spec.task == "classify":
            return _decode.classify(head, self.labels, spec.top_k)
        if spec.task == "score":
            return _decode.score(head)
        if spec.task == "embed":
            width = encoded.special.shape[1]
            mask = (np.arange(width)[None, :] < encoded.lengths[:, None]).astype(np.int64)
            return _decode.embed(head, mask, spec.pooling, spec.normalize)
        return _decode.slots(
            head,
            self.labels,
            encoded.lengths,
            encoded.special,
            encoded.words,
            encoded.offsets,
            encoded.texts[0],
        )

    def run(self, texts: Sequence[Sequence[str]], run_fn: RunFn) -> dict[str, np.ndarray]:
        """Encode ``texts``, run the model with ``run_fn``, decode: the external outputs."""
        encoded = self.encode(texts)
        return self.decode(run_fn(encoded.feeds), encoded)


def _check_runtime_shape(
    task: str, name: str, head: np.ndarray, labels: int, rows: int, pooling: str
) -> None:
    """A head whose shape cannot be decoded is a bundle/model mismatch (500), said clearly."""
    expected = {
        "classify": (2, f"[{rows}, {labels}]"),
        "slots": (3, f"[{rows}, seq, {labels}]"),
        "embed": (3 if pooling != "none" else 2, "[n, seq, d]" if pooling != "none" else "[n, d]"),
    }
    shape = list(head.shape)
    if not shape or shape[0] != rows:
        raise ProcessorError(f"output {name!r} has shape {shape}; expected {rows} rows first")
    if task in expected:
        rank, text = expected[task]
        if head.ndim != rank or (task in ("classify", "slots") and shape[-1] != labels):
            raise ProcessorError(f"output {name!r} has shape {shape}; the {task} task needs {text}")
    elif task == "score" and not (head.ndim == 1 or (head.ndim == 2 and shape[1] in (1, 2))):
        raise ProcessorError(
            f"output {name!r} has shape {shape}; the score task needs [n], [n, 1] or [n, 2]"
        )


# -- loading ----------------------------------------------------------------------------------


def _read_spec(root: Path) -> PipelineSpec:
    where = root / BUNDLE_SPEC
    try:
        text = where.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BundleError(f"{root} is not a bundle: it has no {BUNDLE_SPEC}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"cannot read {where}: {exc}") from exc
    try:
        return PipelineSpec.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'document'}: {e['msg']}" for e in exc.errors()
        )
        raise BundleError(f"{where} is not a valid pipeline spec: {problems}") from None


def _load_tokenizer(root: Path, spec: PipelineSpec) -> tuple[Tokenizer, int]:
    where = root / spec.tokenizer
    if not where.is_file():
        raise BundleError(
            f"the bundle has no tokenizer: {where} does not exist (expected a Hugging Face "
            f"tokenizer.json, e.g. saved with tokenizer.save())"
        )
    try:
        tokenizer = Tokenizer.from_file(str(where))
    except Exception as exc:  # tokenizers raises plain Exception
        raise BundleError(
            f"{where} is not a Hugging Face tokenizer.json (Tokenizer.from_file failed: {exc})"
        ) from exc
    padding = tokenizer.padding
    pad_id = int(padding["pad_id"]) if padding else 0
    pair = len(spec.inputs) == 2
    specials = tokenizer.num_special_tokens_to_add(pair)
    if specials >= spec.max_length:
        raise BundleError(
            f"max_length {spec.max_length} leaves no room for text: the tokenizer adds "
            f"{specials} special tokens per {'pair' if pair else 'text'}"
        )
    tokenizer.no_padding()  # encode pads per batch, to the longest row
    tokenizer.enable_truncation(spec.max_length, strategy=spec.truncation)
    return tokenizer, pad_id


def _read_labels(root: Path, spec: PipelineSpec) -> tuple[str, ...]:
    if not spec.labelled:
        return ()
    assert spec.labels is not None  # the spec requires it for labelled tasks
    where = root / spec.labels
    try:
        text = where.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BundleError(
            f"task {spec.task!r} needs a label list: {where} does not exist "
            "(expected one label per line)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"cannot read the label list {where}: {exc}") from exc
    labels = [line.strip() for line in text.splitlines()]
    while labels and not labels[-1]:
        labels.pop()  # trailing blank lines are an editor's, not labels
    seen: dict[str, int] = {}
    for number, label in enumerate(labels, start=1):
        if not label:
            raise BundleError(f"{where} line {number} is blank (expected one label per line)")
        if label in seen:
            raise BundleError(
                f"{where} lists {label!r} twice (lines {seen[label]} and {number}); "
                "labels must be distinct"
            )
        seen[label] = number
        if spec.task == "slots" and not (
            label == "O" or (label[:2] in ("B-", "I-") and len(label) > 2)
        ):
            raise BundleError(
                f"{where} line {number}: {label!r} is not a BIO tag (expected O, B-<slot> or "
                "I-<slot>)"
            )
    if len(labels) < 2 and spec.task == "classify":
        raise BundleError(f"{where} lists {len(labels)} label(s); a classifier needs at least 2")
    if not labels:
        raise BundleError(f"{where} lists no labels")
    return tuple(labels)


def _model_path(root: Path, spec: PipelineSpec) -> Path:
    path = root / spec.model
    if path.is_dir():
        if not is_blade_dir(path):
            raise BundleError(
                f"model {spec.model!r} is a directory without blade.json (expected an ONNX file "
                "or a blade artifact directory)"
            )
    elif not path.is_file():
        raise BundleError(f"the bundle has no model: {path} does not exist")
    return path


def _check_inputs(names: Iterable[str], where: Path) -> tuple[str, ...]:
    names = tuple(names)
    unknown = [n for n in names if n not in MODEL_INPUTS]
    if unknown or "input_ids" not in names:
        raise BundleError(
            f"the model {where} takes {list(names)}; a pipeline feeds input_ids and optionally "
            "attention_mask and token_type_ids"
        )
    return names


def _check_head(
    spec: PipelineSpec, labels: Sequence[str], outputs: Mapping[str, tuple[int, ...]], where: Path
) -> None:
    if not outputs:
        raise BundleError(f"the model {where} has no outputs")
    name = spec.output or next(iter(outputs))
    if name not in outputs:
        raise BundleError(
            f"pipeline.json names output {name!r}, but the model {where} has {list(outputs)}"
        )
    shape = tuple(outputs[name])
    width = shape[-1] if shape else -1
    shown = list(shape)
    if spec.task in ("classify", "slots"):
        rank = 2 if spec.task == "classify" else 3
        if len(shape) != rank:
            form = "[batch, classes]" if rank == 2 else "[batch, seq, tags]"
            raise BundleError(f"the {spec.task} head {name!r} has shape {shown}; expected {form}")
        if width >= 0 and width != len(labels):
            raise BundleError(
                f"the label list does not match the model: {spec.labels} lists {len(labels)} "
                f"labels but the head {name!r} has {width} (shape {shown}); expected one label "
                "per output"
            )
    elif spec.task == "score":
        if not (len(shape) == 1 or (len(shape) == 2 and width in (1, 2, -1))):
            raise BundleError(
                f"the score head {name!r} has shape {shown}; expected [batch], [batch, 1] "
                "(a logit: sigmoid) or [batch, 2] (softmax, class 1)"
            )
    else:
        rank = 2 if spec.pooling == "none" else 3
        if len(shape) != rank:
            form = "[batch, dim]" if rank == 2 else "[batch, seq, dim]"
            raise BundleError(
                f"the embed head {name!r} has shape {shown}; with pooling {spec.pooling!r} "
                f"expected {form}"
            )
    if spec.task == "classify" and spec.top_k > len(labels):
        raise BundleError(f"top_k {spec.top_k} is more than the {len(labels)} labels")


def read_bundle(path: str | Path) -> Bundle:
    """Read and check everything of a bundle but its model's graph: the spec, tokenizer, labels
    and that the model file (or blade directory) exists. The result is not bound to the model
    (``model_outputs`` None, ``model_inputs`` the default): ``Bundle.bind`` does that once the
    serving processor has loaded it; ``load_bundle`` reads the graph instead.

    Raises:
        BundleError: as ``load_bundle``, except for the checks that need the model's graph.
    """
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"bundle {root} is not a directory")
    spec = _read_spec(root)
    tokenizer, pad_id = _load_tokenizer(root, spec)
    labels = _read_labels(root, spec)
    model_path = _model_path(root, spec)
    return Bundle(
        root=root,
        spec=spec,
        tokenizer=tokenizer,
        labels=labels,
        model_path=model_path,
        pad_id=pad_id,
    )


def load_bundle(
    path: str | Path,
    *,
    model_outputs: Mapping[str, tuple[int, ...]] | None = None,
    model_inputs: Iterable[str] | None = None,
) -> Bundle:
    """Read and check a bundle directory.

    Args:
        path: the bundle directory.
        model_outputs: the model's outputs (name -> full shape, batch first), e.g. from the
            serving processor; when given, the head is checked against the task and labels
            (classify/slots: last dim == number of labels; score: [b], [b, 1] or [b, 2]).
        model_inputs: the model's input names; None reads them from the graph (``onnx``, or a
            blade artifact's ``blade.json``), and the outputs too when ``model_outputs`` is None
            (so the head is checked then as well: that is ``inspect_bundle``).

    Raises:
        BundleError: what was wrong and what was expected: no or invalid pipeline.json, a
            missing or unreadable tokenizer, a missing label list (classify, slots), blank or
            duplicate labels, a missing model, a model input a pipeline cannot feed, a head
            that does not match the task or the labels.
    """
    bundle = read_bundle(path)
    if model_inputs is None:
        graph_inputs, graph_outputs = read_graph(bundle.model_path)
        model_inputs = graph_inputs
        if model_outputs is None:
            model_outputs = graph_outputs
    return bundle.bind(model_inputs, model_outputs)


def inspect_bundle(path: str | Path) -> Bundle:
    """``load_bundle`` with the model's inputs and outputs read from its graph (by ``onnx``, no
    runtime): what the control plane checks a bundle with at registration.

    Raises:
        BundleError: as ``load_bundle``, and a model that is not ONNX.
    """
    return load_bundle(path, model_outputs=None, model_inputs=None)


def spec_json(spec: PipelineSpec) -> str:
    """``pipeline.json`` text for ``spec`` (what bundle builders write)."""
    return json.dumps(spec.model_dump(mode="json", exclude_defaults=False), indent=2) + "\n"
