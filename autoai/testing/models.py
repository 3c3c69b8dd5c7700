"""Tiny example ONNX models, built in memory with `onnx.helper` (no torch, no downloads), for
tests, benchmarks and scripts. Needs `onnx` (the `server` extra); `autoai.testing` does not import
this module itself.

Every builder takes a directory, saves `<name>.onnx` there and returns its path. The models use
opset 17 and IR version 8 (what opset 17 shipped with), which every onnxruntime since 1.12 loads,
1.32 included. Weights come from a seeded generator, so a rebuild gives the same bytes.

`tiny_bert` is also the stand-in that `scripts/build_models.py` generates when torch is missing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "IR_VERSION",
    "OIP_TO_ONNX",
    "OPSET",
    "add_mul",
    "classifier",
    "failing",
    "identity",
    "mean_pooling",
    "multi_dtype",
    "no_batch",
    "string_identity",
    "tagged",
    "tiny_bert",
]

OPSET: Final = 17
IR_VERSION: Final = 8

#: OIP datatype name -> ONNX element type, for the datatypes the fixtures use.
OIP_TO_ONNX: Final[dict[str, int]] = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "INT8": TensorProto.INT8,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}

Dim = int | str


def _tensor(name: str, elem_type: int, shape: Sequence[Dim]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, list(shape))


def _save(
    directory: str | Path,
    name: str,
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] = (),
) -> Path:
    graph = helper.make_graph(list(nodes), name, list(inputs), list(outputs), list(initializers))
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="autoai-tests"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    path = Path(directory) / f"{name}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def identity(directory: str | Path, dtype: str = "FP32", n: int | None = None) -> Path:
    """`x` [batch, n] -> `y` = x, of OIP datatype `dtype`; `n` is dynamic unless given."""
    elem = OIP_TO_ONNX[dtype]
    shape: list[Dim] = ["batch", "n" if n is None else n]
    node = helper.make_node("Identity", ["x"], ["y"])
    name = f"identity_{dtype.lower()}"
    return _save(directory, name, [node], [_tensor("x", elem, shape)], [_tensor("y", elem, shape)])


def add_mul(directory: str | Path) -> Path:
    """Two FP32 inputs `a`, `b` [batch, 4] -> `sum` = a + b, `prod` = a * b."""
    shape: list[Dim] = ["batch", 4]
    nodes = [
        helper.make_node("Add", ["a", "b"], ["sum"]),
        helper.make_node("Mul", ["a", "b"], ["prod"]),
    ]
    inputs = [_tensor("a", TensorProto.FLOAT, shape), _tensor("b", TensorProto.FLOAT, shape)]
    outputs = [_tensor("sum", TensorProto.FLOAT, shape), _tensor("prod", TensorProto.FLOAT, shape)]
    return _save(directory, "add_mul", nodes, inputs, outputs)


def classifier(directory: str | Path, seed: int = 0) -> Path:
    """`x` FP32 [batch, 8] -> `logits` [batch, 3] (x @ W + b, seeded), `probs` = softmax(logits)."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((8, 3)).astype(np.float32)
    bias = rng.standard_normal(3).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    inits = [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")]
    outputs = [
        _tensor("logits", TensorProto.FLOAT, ["batch", 3]),
        _tensor("probs", TensorProto.FLOAT, ["batch", 3]),
    ]
    inputs = [_tensor("x", TensorProto.FLOAT, ["batch", 8])]
    return _save(directory, "classifier", nodes, inputs, outputs, inits)


def multi_dtype(directory: str | Path) -> Path:
    """Inputs `in_<dtype>` [batch, 2] of INT32, INT64, FP16, BOOL, UINT8 -> `out_<dtype>` (copy)."""
    nodes: list[onnx.NodeProto] = []
    inputs: list[onnx.ValueInfoProto] = []
    outputs: list[onnx.ValueInfoProto] = []
    for dtype in ("INT32", "INT64", "FP16", "BOOL", "UINT8"):
        suffix = dtype.lower()
        nodes.append(helper.make_node("Identity", [f"in_{suffix}"], [f"out_{suffix}"]))
        inputs.append(_tensor(f"in_{suffix}", OIP_TO_ONNX[dtype], ["batch", 2]))
        outputs.append(_tensor(f"out_{suffix}", OIP_TO_ONNX[dtype], ["batch", 2]))
    return _save(directory, "multi_dtype", nodes, inputs, outputs)


def string_identity(directory: str | Path) -> Path:
    """`text` STRING (OIP BYTES) [batch, 1] -> `text_out` = text."""
    shape: list[Dim] = ["batch", 1]
    node = helper.make_node("Identity", ["text"], ["text_out"])
    inputs = [_tensor("text", TensorProto.STRING, shape)]
    outputs = [_tensor("text_out", TensorProto.STRING, shape)]
    return _save(directory, "string_identity", [node], inputs, outputs)


def no_batch(directory: str | Path) -> Path:
    """`x` FP32 of fixed shape [3] (no batch dim) -> `y` = 2 * x."""
    nodes = [helper.make_node("Mul", ["x", "two"], ["y"])]
    inits = [numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")]
    inputs = [_tensor("x", TensorProto.FLOAT, [3])]
    outputs = [_tensor("y", TensorProto.FLOAT, [3])]
    return _save(directory, "no_batch", nodes, inputs, outputs, inits)


def failing(directory: str | Path) -> Path:
    """`idx` INT64 [batch, 1] -> `out` [batch, 1, 4] gathered from a 10-row table.

    onnxruntime raises at run time for any index >= 10 (or < -10): a model whose failures the
    caller controls per request.
    """
    table = np.arange(40, dtype=np.float32).reshape(10, 4)
    nodes = [helper.make_node("Gather", ["table", "idx"], ["out"], axis=0)]
    inits = [numpy_helper.from_array(table, "table")]
    inputs = [_tensor("idx", TensorProto.INT64, ["batch", 1])]
    outputs = [_tensor("out", TensorProto.FLOAT, ["batch", 1, 4])]
    return _save(directory, "failing", nodes, inputs, outputs, inits)


class _GraphBuilder:
    """Accumulates nodes and seeded initializers; each op returns its (generated) output name."""

    def __init__(self, seed: int) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._rng = np.random.default_rng(seed)
        self._count = 0

    def const(self, name: str, array: npt.NDArray[np.generic]) -> str:
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def weight(self, name: str, shape: tuple[int, ...], scale: float = 0.05) -> str:
        values = (self._rng.standard_normal(shape) * scale).astype(np.float32)
        return self.const(name, values)

    def op(self, op_type: str, *inputs: str, output: str | None = None, **attrs: Any) -> str:
        self._count += 1
        out = output or f"{op_type.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], None, None, **attrs))
        return out

    def linear(self, x: str, prefix: str, n_in: int, n_out: int) -> str:
        xw = self.op("MatMul", x, self.weight(f"{prefix}.weight", (n_in, n_out)))
        return self.op("Add", xw, self.weight(f"{prefix}.bias", (n_out,)))

    def layer_norm(self, x: str, prefix: str, hidden: int) -> str:
        gamma = self.const(f"{prefix}.gamma", np.ones(hidden, dtype=np.float32))
        beta = self.const(f"{prefix}.beta", np.zeros(hidden, dtype=np.float32))
        return self.op("LayerNormalization", x, gamma, beta, axis=-1, epsilon=1e-12)


def _encoder_layer(g: _GraphBuilder, x: str, mask_bias: str, i: int, hidden: int) -> str:
    """A single-head post-LN encoder layer: attention, add + LN, erf-GELU FFN, add + LN."""
    p = f"layer{i}"
    q = g.linear(x, f"{p}.query", hidden, hidden)
    k = g.linear(x, f"{p}.key", hidden, hidden)
    v = g.linear(x, f"{p}.value", hidden, hidden)
    scores = g.op("MatMul", q, g.op("Transpose", k, perm=[0, 2, 1]))
    scale = g.const(f"{p}.scale", np.array(1.0 / math.sqrt(hidden), dtype=np.float32))
    probs = g.op("Softmax", g.op("Add", g.op("Mul", scores, scale), mask_bias), axis=-1)
    attn = g.linear(g.op("MatMul", probs, v), f"{p}.attn_out", hidden, hidden)
    x = g.layer_norm(g.op("Add", x, attn), f"{p}.attn_ln", hidden)
    h = g.linear(x, f"{p}.ffn_in", hidden, 4 * hidden)
    sqrt2 = g.const(f"{p}.sqrt2", np.array(math.sqrt(2.0), dtype=np.float32))
    half = g.const(f"{p}.half", np.array(0.5, dtype=np.float32))
    one = g.const(f"{p}.one", np.array(1.0, dtype=np.float32))
    gelu = g.op("Mul", g.op("Mul", h, half), g.op("Add", g.op("Erf", g.op("Div", h, sqrt2)), one))
    out = g.linear(gelu, f"{p}.ffn_out", 4 * hidden, hidden)
    return g.layer_norm(g.op("Add", x, out), f"{p}.ffn_ln", hidden)


def tiny_bert(
    directory: str | Path,
    vocab: int = 100,
    hidden: int = 16,
    seq_dynamic: bool = True,
    *,
    layers: int = 1,
    seq: int = 16,
    max_seq: int = 128,
    name: str = "tiny_bert",
    seed: int = 0,
) -> Path:
    """A BERT-shaped encoder with mask mean pooling, seeded random weights.

    `input_ids`, `attention_mask` INT64 [batch, seq] -> `last_hidden_state` FP32
    [batch, seq, hidden] and `sentence_embedding` FP32 [batch, hidden] (sum of mask-weighted rows /
    count of mask ones).
    Word + position embeddings, LayerNorm, `layers` single-head encoder layers. `seq` is a dynamic
    dim (up to `max_seq` positions) unless `seq_dynamic` is false, when it is fixed to `seq`.
    """
    g = _GraphBuilder(seed)
    seq_dim: Dim = "seq" if seq_dynamic else seq
    word = g.op("Gather", g.weight("word_embeddings", (vocab, hidden), 1.0), "input_ids", axis=0)
    seq_len = g.op("Gather", g.op("Shape", "input_ids"), g.const("one_i64", np.array(1)), axis=0)
    positions = g.op("Range", g.const("zero_i64", np.array(0)), seq_len, "one_i64")
    pos = g.op("Gather", g.weight("position_embeddings", (max_seq, hidden), 0.1), positions, axis=0)
    x = g.layer_norm(g.op("Add", word, pos), "embeddings_ln", hidden)

    mask = g.op("Cast", "attention_mask", to=TensorProto.FLOAT)
    one = g.const("one_f32", np.array(1.0, dtype=np.float32))
    neg = g.const("neg_large", np.array(-10000.0, dtype=np.float32))
    bias = g.op("Mul", g.op("Sub", one, mask), neg)
    mask_bias = g.op("Unsqueeze", bias, g.const("axes_1", np.array([1])))  # [batch, 1, seq]
    for i in range(layers):
        x = _encoder_layer(g, x, mask_bias, i, hidden)
    g.op("Identity", x, output="last_hidden_state")

    mask3 = g.op("Unsqueeze", mask, g.const("axes_2", np.array([2])))  # [batch, seq, 1]
    summed = g.op("ReduceSum", g.op("Mul", x, mask3), "axes_1", keepdims=0)
    count = g.op("ReduceSum", mask3, "axes_1", keepdims=0)
    count = g.op("Max", count, g.const("eps", np.array(1e-9, dtype=np.float32)))
    g.op("Div", summed, count, output="sentence_embedding")

    inputs = [
        _tensor("input_ids", TensorProto.INT64, ["batch", seq_dim]),
        _tensor("attention_mask", TensorProto.INT64, ["batch", seq_dim]),
    ]
    outputs = [
        _tensor("last_hidden_state", TensorProto.FLOAT, ["batch", seq_dim, hidden]),
        _tensor("sentence_embedding", TensorProto.FLOAT, ["batch", hidden]),
    ]
    return _save(directory, name, g.nodes, inputs, outputs, g.initializers)


def mean_pooling(
    directory: str | Path,
    masked: bool = True,
    vocab: int = 10,
    hidden: int = 4,
    *,
    name: str | None = None,
    seed: int = 0,
) -> Path:
    """`input_ids`, `attention_mask` INT64 [batch, seq] -> `embedding` FP32 [batch, hidden]: the
    mean of the token embeddings (a seeded `vocab` x `hidden` table).

    `masked`: weighted by the mask (sum of mask-weighted rows / count of mask ones), so padded
    positions do not count; else the plain mean over every position, the mask unused: padding
    changes the result.
    """
    g = _GraphBuilder(seed)
    emb = g.op("Gather", g.weight("embeddings", (vocab, hidden), 1.0), "input_ids", axis=0)
    if masked:
        mask = g.op("Cast", "attention_mask", to=TensorProto.FLOAT)
        mask = g.op("Unsqueeze", mask, g.const("axes_2", np.array([2])))  # [batch, seq, 1]
        axes = g.const("axes_1", np.array([1]))
        summed = g.op("ReduceSum", g.op("Mul", emb, mask), axes, keepdims=0)
        count = g.op("ReduceSum", mask, axes, keepdims=0)
        count = g.op("Max", count, g.const("eps", np.array(1e-9, dtype=np.float32)))
        g.op("Div", summed, count, output="embedding")
    else:
        g.op("ReduceMean", emb, axes=[1], keepdims=0, output="embedding")
    inputs = [
        _tensor("input_ids", TensorProto.INT64, ["batch", "seq"]),
        _tensor("attention_mask", TensorProto.INT64, ["batch", "seq"]),
    ]
    outputs = [_tensor("embedding", TensorProto.FLOAT, ["batch", hidden])]
    name = name or ("masked_mean" if masked else "unmasked_mean")
    return _save(directory, name, g.nodes, inputs, outputs, g.initializers)


def tagged(directory: str | Path, tag: float, name: str | None = None) -> Path:
    """`x` FP32 [batch, n] -> `y` = x + tag: tells which version answered a routed call."""
    nodes = [helper.make_node("Add", ["x", "tag"], ["y"])]
    inits = [numpy_helper.from_array(np.array(tag, dtype=np.float32), "tag")]
    shape: list[Dim] = ["batch", "n"]
    inputs = [_tensor("x", TensorProto.FLOAT, shape)]
    outputs = [_tensor("y", TensorProto.FLOAT, shape)]
    return _save(directory, name or f"tagged_{tag:g}", nodes, inputs, outputs, inits)
