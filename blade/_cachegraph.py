"""ONNX graphs that keep a generation bundle's key/value caches on the device: the decoder step
with its cache write in the graph, and the small graphs a device cache moves rows with. Pure:
graphs in, graphs out, no session.

``with_cache_update`` adds to ``decoder.onnx``, per self-attention cache ``self_k.l`` /
``self_v.l`` (``[B, H, S, D]``), an output ``updated(name)``: that cache with the step's last new
key/value (``new_k.l`` / ``new_v.l``, ``[B, H, T, D]``) written at slot ``positions[b] + T - 1``::

    slots = Range(0, S)                              [1, 1, S, 1]
    last  = positions + T - 1                        [B, 1, 1, 1]  (from device tensors only)
    updated(self_k.l) = Where(slots == last, new_k.l[:, :, T-1:T], self_k.l)

An element-wise Where, not a ScatterND, because:

- bound to the same device buffer as its cache input it updates the cache in place: each
  element is read and written by the same thread;
- it has no host-side state: ONNX Runtime's CUDA ScatterND uploads its strides from a pinned
  host buffer at every run, released after the run, which a captured CUDA graph would replay;
- the one slot it changes is one this same step reads as masked (a row attends to its cache
  slots ``< positions[b]``), so however the graph's kernels are ordered, the step's answer is
  the same.

Its cost is one read and one write of the rows' self caches per step (the new keys/values are
a broadcast operand). The other graphs run outside CUDA graphs, over ``count`` tensors at once
(one session run for every layer's keys and values): ``copy_graph`` (Identity between two
device addresses: a row move), ``resize_graph`` (the slot axis cut or zero-padded into another
buffer: a bucket change), ``prefix_graph`` (the prefill's keys/values written at slots
``[0, P)``, in place) and ``zeros_graph`` (a new buffer's content: the caches must hold finite
values, since the graph masks stale slots but does not zero them).
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx
from onnx import TensorProto, helper

__all__ = [
    "copy_graph",
    "prefix_graph",
    "resize_graph",
    "updated",
    "with_cache_update",
    "zeros_graph",
]

_OPSET = 17
_PREFIX = "blade_cache/"
_SLOT_AXIS = 2  # [B, H, S, D]
_RANK = 4
_DIMS: list[str | int] = ["n", "H", "S", "D"]


def updated(name: str) -> str:
    """The decoder output ``with_cache_update`` adds for the self cache ``name``."""
    return f"{name}_updated"


def _int64(name: str, values: Sequence[int]) -> TensorProto:
    return helper.make_tensor(name, TensorProto.INT64, [len(values)], list(values))


def _scalar(name: str, value: int) -> TensorProto:
    return helper.make_tensor(name, TensorProto.INT64, [], [value])


def _value_info(graph: onnx.GraphProto, name: str) -> onnx.ValueInfoProto:
    for value in (*graph.input, *graph.output):
        if value.name == name:
            return value  # type: ignore[no-any-return]
    raise ValueError(f"the decoder graph has no input or output {name!r}")


def _slots(source: str, out: str) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """``out`` = ``0 .. S-1`` over ``source``'s slot axis, shaped ``[1, 1, S, 1]``."""
    p = _PREFIX + out + "/"
    nodes = [
        helper.make_node("Shape", [source], [p + "S1"], start=_SLOT_AXIS, end=_SLOT_AXIS + 1),
        helper.make_node("Squeeze", [p + "S1"], [p + "S"]),
        helper.make_node("Range", [p + "zero", p + "S", p + "one"], [p + "range"]),
        helper.make_node("Unsqueeze", [p + "range", p + "axes"], [out]),
    ]
    inits = [_scalar(p + "zero", 0), _scalar(p + "one", 1), _int64(p + "axes", [0, 1, 3])]
    return nodes, inits


def with_cache_update(
    model: onnx.ModelProto, self_names: Sequence[str], new_names: Sequence[str]
) -> onnx.ModelProto:
    """The decoder step with ``updated(name)`` outputs (see the module docstring) for each self
    cache in ``self_names``, written from the same position of ``new_names``.

    Raises:
        ValueError: the graph lacks ``tokens``, ``positions``, a named cache or new key/value,
            or a new key/value's element type differs from its cache's.
    """
    if len(self_names) != len(new_names) or not self_names:
        raise ValueError("with_cache_update needs one new key/value name per self cache name")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    for name in ("tokens", "positions"):
        _value_info(graph, name)
    p = _PREFIX
    nodes, inits = _slots(self_names[0], p + "slots")
    inits += [_int64(p + "minus1", [-1]), _int64(p + "axis", [_SLOT_AXIS])]
    inits += [_int64(p + "end", [2**62]), _int64(p + "one1", [1]), _scalar(p + "t_axis", 1)]
    inits += [_int64(p + "t_axes", [1]), _int64(p + "tail_axes", [2, 3])]
    # last = positions + T - 1, computed from device tensors only: a value taken from a shape
    # (on the host) and added to device data would need a copy, and ONNX Runtime captures no
    # CUDA graph of a session with copies between host and device.
    nodes += [
        helper.make_node("Shape", ["tokens"], [p + "BT"]),
        helper.make_node("ConstantOfShape", [p + "BT"], [p + "ones"], value=_int64("value", [1])),
        helper.make_node("CumSum", [p + "ones", p + "t_axis"], [p + "counts"]),
        helper.make_node("Slice", [p + "counts", p + "minus1", p + "end", p + "t_axes"], [p + "T"]),
        helper.make_node("Unsqueeze", ["positions", p + "t_axes"], [p + "pos2"]),
        helper.make_node("Add", [p + "pos2", p + "T"], [p + "end2"]),
        helper.make_node("Sub", [p + "end2", p + "one1"], [p + "last2"]),
        helper.make_node("Unsqueeze", [p + "last2", p + "tail_axes"], [p + "last4"]),
        helper.make_node("Equal", [p + "slots", p + "last4"], [p + "write"]),
    ]
    for cache, new in zip(self_names, new_names, strict=True):
        cache_type = _value_info(graph, cache).type.tensor_type.elem_type
        if _value_info(graph, new).type.tensor_type.elem_type != cache_type:
            raise ValueError(
                f"{new} and {cache} have different element types: the step cannot write its "
                "keys/values into the cache"
            )
        if any(o.name == updated(cache) for o in graph.output):
            raise ValueError(f"the decoder already has an output {updated(cache)!r}")
        last = f"{p}{new}/last"
        nodes += [
            helper.make_node("Slice", [new, p + "minus1", p + "end", p + "axis"], [last]),
            helper.make_node("Where", [p + "write", last, cache], [updated(cache)]),
        ]
        dims = ["B", "H", "S", "D"]
        graph.output.append(helper.make_tensor_value_info(updated(cache), cache_type, dims))
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    return out


def _model(
    name: str,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    inits: list[TensorProto],
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = 8  # what ONNX Runtime 1.16 and later read
    return model


def _tensor(name: str, elem_type: int, dims: Sequence[str | int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, list(dims))


def copy_graph(elem_type: int, count: int) -> onnx.ModelProto:
    """``y.i = x.i`` over ``count`` flat buffers: bound to device addresses, device copies."""
    return _model(
        "blade_copy",
        [helper.make_node("Identity", [f"x.{i}"], [f"y.{i}"]) for i in range(count)],
        [_tensor(f"x.{i}", elem_type, [f"N{i}"]) for i in range(count)],
        [_tensor(f"y.{i}", elem_type, [f"N{i}"]) for i in range(count)],
        [],
    )


def _pads(grow: str, out: str) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """``out``: Pad's pads that add ``grow`` (``[1]``) slots at the end of the slot axis."""
    p = _PREFIX
    before = [0] * (_RANK + _SLOT_AXIS)
    after = [0] * (_RANK - _SLOT_AXIS - 1)
    inits = [_int64(p + "pads_before", before), _int64(p + "pads_after", after)]
    node = helper.make_node("Concat", [p + "pads_before", grow, p + "pads_after"], [out], axis=0)
    return [node], inits


def resize_graph(elem_type: int, count: int) -> onnx.ModelProto:
    """``y.i = x.i`` with the slot axis cut or zero-padded to ``length`` (a bucket change)."""
    p = _PREFIX
    nodes, inits = _pads(p + "grow", p + "pads")
    inits += [_int64(p + "zero", [0]), _int64(p + "starts", [0]), _int64(p + "axis", [_SLOT_AXIS])]
    nodes[:0] = [
        helper.make_node("Shape", ["x.0"], [p + "S"], start=_SLOT_AXIS, end=_SLOT_AXIS + 1),
        helper.make_node("Sub", ["length", p + "S"], [p + "diff"]),
        helper.make_node("Max", [p + "diff", p + "zero"], [p + "grow"]),
    ]
    for i in range(count):
        nodes += [
            helper.make_node("Pad", [f"x.{i}", p + "pads"], [f"{p}padded.{i}"], mode="constant"),
            helper.make_node(
                "Slice", [f"{p}padded.{i}", p + "starts", "length", p + "axis"], [f"y.{i}"]
            ),
        ]
    inputs = [_tensor(f"x.{i}", elem_type, _DIMS) for i in range(count)]
    inputs.append(_tensor("length", TensorProto.INT64, [1]))
    outputs = [_tensor(f"y.{i}", elem_type, ["n", "H", "S2", "D"]) for i in range(count)]
    return _model("blade_resize", nodes, inputs, outputs, inits)


def prefix_graph(elem_type: int, count: int) -> onnx.ModelProto:
    """``y.i = cache.i`` with ``kv.i`` (``[n, H, P, D]``) written at slots ``[0, P)``; bound to
    the caches' own buffers it writes in place."""
    p = _PREFIX
    nodes, inits = _slots("cache.0", p + "slots")
    pad_nodes, pad_inits = _pads(p + "grow", p + "pads")
    nodes += [
        helper.make_node("Shape", ["kv.0"], [p + "P"], start=_SLOT_AXIS, end=_SLOT_AXIS + 1),
        helper.make_node("Shape", ["cache.0"], [p + "S"], start=_SLOT_AXIS, end=_SLOT_AXIS + 1),
        helper.make_node("Sub", [p + "S", p + "P"], [p + "grow"]),
        *pad_nodes,
        helper.make_node("Squeeze", [p + "P"], [p + "P0"]),
        helper.make_node("Less", [p + "slots", p + "P0"], [p + "write"]),
    ]
    inits += pad_inits
    for i in range(count):
        nodes += [
            helper.make_node("Pad", [f"kv.{i}", p + "pads"], [f"{p}kv.{i}"], mode="constant"),
            helper.make_node("Where", [p + "write", f"{p}kv.{i}", f"cache.{i}"], [f"y.{i}"]),
        ]
    inputs = [_tensor(f"cache.{i}", elem_type, _DIMS) for i in range(count)]
    inputs += [_tensor(f"kv.{i}", elem_type, ["n", "H", "P", "D"]) for i in range(count)]
    outputs = [_tensor(f"y.{i}", elem_type, _DIMS) for i in range(count)]
    return _model("blade_prefix", nodes, inputs, outputs, inits)


def zeros_graph(elem_type: int, count: int) -> onnx.ModelProto:
    """``y.i`` = zeros of ``shape`` (``[4]``), ``count`` outputs (a new buffer's content)."""
    zero = helper.make_tensor("value", elem_type, [1], [0])
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], [f"y.{i}"], value=zero) for i in range(count)
    ]
    outputs = [_tensor(f"y.{i}", elem_type, _DIMS) for i in range(count)]
    return _model("blade_zeros", nodes, [_tensor("shape", TensorProto.INT64, [4])], outputs, [])
