"""Reading an ONNX model: digest, signature, and what kind of model it is (BERT-like, its heads,
hidden size and vocabulary). Pure apart from reading the file."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from eas_server.processors.onnx import not_onnx

from ._errors import InvalidModel

__all__ = ["ModelInfo", "TensorInfo", "inspect_model"]

_ONNX_TO_NUMPY = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.INT16: np.int16,
    onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.UINT16: np.uint16,
    onnx.TensorProto.UINT32: np.uint32,
    onnx.TensorProto.UINT64: np.uint64,
    onnx.TensorProto.BOOL: np.bool_,
}
# The oldest default-domain opset the passes are tested with, and the newest onnx knows.
MIN_OPSET = 11


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: name, numpy dtype, shape (-1 for a symbolic dim)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    def json(self) -> dict[str, object]:
        return {"name": self.name, "dtype": self.dtype.name, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelInfo:
    """What the optimizer needs to know about a model.

    Attributes:
        path: the file.
        sha256: digest of the file's bytes (the artifact cache key starts with it).
        opset: default-domain opset.
        inputs, outputs: the signature.
        batchable: every input and output has a symbolic leading dim.
        bert_like: token-id input(s), an embedding table and LayerNormalization: the
            transformer fusions apply.
        num_heads, hidden_size: detected from the graph (0 when unknown).
        vocab_size: rows of the embedding table fed by the token ids (0 when unknown).
        token_input, mask_input: names of the token-id and attention-mask inputs, if any.
        op_counts: node count per op type.
    """

    path: Path
    sha256: str
    opset: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    batchable: bool
    bert_like: bool = False
    num_heads: int = 0
    hidden_size: int = 0
    vocab_size: int = 0
    token_input: str | None = None
    mask_input: str | None = None
    op_counts: dict[str, int] = field(default_factory=dict)
    embedding_norms: np.ndarray | None = field(default=None, repr=False, compare=False)

    def signature(self) -> dict[str, object]:
        return {
            "inputs": [t.json() for t in self.inputs],
            "outputs": [t.json() for t in self.outputs],
        }


def _tensor_info(value: onnx.ValueInfoProto) -> TensorInfo:
    ttype = value.type.tensor_type
    if not value.type.HasField("tensor_type"):
        raise InvalidModel(f"{value.name}: only tensor inputs and outputs are supported")
    dtype = _ONNX_TO_NUMPY.get(int(ttype.elem_type))  # type: ignore[call-overload]
    if dtype is None:
        name = onnx.TensorProto.DataType.Name(ttype.elem_type)
        raise InvalidModel(f"{value.name}: element type {name} is not supported by the optimizer")
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in ttype.shape.dim)
    return TensorInfo(value.name, np.dtype(dtype), dims)


def _load(path: Path, shown: str) -> tuple[onnx.ModelProto, bytes]:
    """The model and the file's bytes; protobuf's "Error parsing message with type
    'onnx.ModelProto'" becomes ``not_onnx``'s line, saying what the file looks like instead."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidModel(f"cannot read {shown}: {exc.strerror}") from exc
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # protobuf's DecodeError, onnx's own errors
        reason = "its bytes do not parse as ONNX protobuf (corrupt or truncated?)"
        raise InvalidModel(not_onnx(shown, data, reason)) from exc
    if not model.graph.node and not model.graph.output:
        raise InvalidModel(not_onnx(shown, data, "it parses as protobuf but holds no graph"))
    return model, data


def _opset(model: onnx.ModelProto, shown: str) -> int:
    opsets = {o.domain or "ai.onnx": int(o.version) for o in model.opset_import}
    opset = opsets.get("ai.onnx", 0)
    newest = onnx.defs.onnx_opset_version()
    if opset < MIN_OPSET or opset > newest:
        raise InvalidModel(
            f"{shown} uses opset {opset}; the optimizer supports opsets {MIN_OPSET}..{newest}"
        )
    return opset


def _heads_of(shape: list[int | None], hidden: int) -> int:
    """Heads of a ``[batch, seq, heads, head_size]`` reshape target (either may be -1), else 0."""
    if len(shape) != 4 or shape[2] is None or shape[3] is None:
        return 0
    heads, size = shape[2], shape[3]
    if heads == -1 and size > 0 and hidden % size == 0:
        heads = hidden // size
    if size == -1 and heads > 0 and hidden % heads == 0:
        size = hidden // heads
    return heads if heads > 0 and size > 0 and heads * size == hidden else 0


def _detect_heads(model: onnx.ModelProto, hidden: int) -> int:
    """Heads from the Reshape constants that split the hidden dim into (heads, head_size)."""
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if len(i.dims) <= 1}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and len(attr.t.dims) <= 1:
                    consts[node.output[0]] = numpy_helper.to_array(attr.t)
    producers = {out: node for node in model.graph.node for out in node.output}

    def shape_of(name: str) -> list[int | None] | None:
        """The Reshape target: a constant, or a Concat of pieces some of which are constant
        (exporters build [batch, seq, heads, head_size] from Shape ops and constants)."""
        if name in consts:
            return [int(v) for v in consts[name].tolist()]
        node = producers.get(name)
        if node is None or node.op_type != "Concat":
            return None
        dims: list[int | None] = []
        for piece in node.input:
            value = consts.get(piece)
            if value is None:
                src = producers.get(piece)
                if src is not None and src.op_type == "Unsqueeze" and src.input[0] in consts:
                    value = consts[src.input[0]].reshape(-1)
            dims.extend([int(v) for v in value.tolist()] if value is not None else [None])
        return dims

    votes: Counter[int] = Counter()
    for node in model.graph.node:
        if node.op_type == "Reshape" and len(node.input) > 1:
            shape = shape_of(node.input[1])
            heads = _heads_of(shape, hidden) if shape is not None else 0
            if heads:
                votes[heads] += 1
    return int(votes.most_common(1)[0][0]) if votes else 0


def inspect_model(path: str | Path, *, shown_as: str | None = None) -> ModelInfo:
    """Read and check a model file.

    Args:
        path: the file.
        shown_as: how error messages name it (default: ``path``), e.g. the name a user
            uploaded it under rather than where it was stored.

    Raises:
        InvalidModel: unreadable, not ONNX, truncated, invalid graph, unsupported opset or types.
    """
    path = Path(path)
    shown = shown_as or str(path)
    model, data = _load(path, shown)
    opset = _opset(model, shown)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        reason = f"onnx's checker refuses its graph: {str(exc).strip().splitlines()[0]}"
        raise InvalidModel(not_onnx(shown, data, reason)) from exc
    init_names = {i.name for i in model.graph.initializer}
    inputs = tuple(_tensor_info(v) for v in model.graph.input if v.name not in init_names)
    outputs = tuple(_tensor_info(v) for v in model.graph.output)
    if not inputs or not outputs:
        raise InvalidModel(f"{shown} has no inputs or no outputs")
    batchable = all(t.shape and t.shape[0] == -1 for t in (*inputs, *outputs))
    ops = Counter(n.op_type for n in model.graph.node)
    token = next((t.name for t in inputs if t.dtype.kind in "iu" and "id" in t.name.lower()), None)
    mask = next((t.name for t in inputs if t.dtype.kind in "iu" and "mask" in t.name.lower()), None)
    vocab = hidden = 0
    norms = None
    if token is not None:
        tables = {i.name: i for i in model.graph.initializer if len(i.dims) == 2}
        for node in model.graph.node:
            if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == token:
                table = tables.get(node.input[0])
                if table is not None:
                    vocab, hidden = int(table.dims[0]), int(table.dims[1])
                    norms = np.linalg.norm(numpy_helper.to_array(table).astype(np.float32), axis=1)
                    break
    bert_like = (
        token is not None and vocab > 0 and (ops["LayerNormalization"] > 0 or ops["ReduceMean"] > 0)
    )
    heads = _detect_heads(model, hidden) if bert_like else 0
    return ModelInfo(
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        opset=opset,
        inputs=inputs,
        outputs=outputs,
        batchable=batchable,
        bert_like=bert_like,
        num_heads=heads,
        hidden_size=hidden,
        vocab_size=vocab,
        token_input=token,
        mask_input=mask,
        op_counts=dict(ops),
        embedding_norms=norms,
    )
