"""The pure gRPC conversion: ModelInferRequest -> the server's request (and plan_request), answers
-> ModelInferResponse, and the JSON documents -> their messages; no server."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp
from tritonclient.grpc import InferResult, service_pb2
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from eas_client import DATATYPES, ProtocolError
from eas_server._model import ModelInfo, plan_request
from eas_server.grpc import decode_infer_request, encode_infer_response
from eas_server.grpc._convert import TYPED_FIELDS, parameters_of
from eas_server.grpc._documents import model_config_response, statistics_response
from eas_server.processors import TensorSpec

ROUND_TRIP = settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
NUMERIC = [d for d in DATATYPES if d != "BYTES"]


def _object_array(items: list[Any], shape: tuple[int, ...]) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)


def _arrays(datatype: str) -> st.SearchStrategy[np.ndarray]:
    if datatype == "BYTES":
        return SHAPES.flatmap(
            lambda shape: st.lists(
                st.binary(max_size=6), min_size=math.prod(shape), max_size=math.prod(shape)
            ).map(lambda items: _object_array(items, shape))
        )
    return hnp.arrays(DATATYPES[datatype], SHAPES)


def _raw_bytes(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":  # tritonclient's own serializer: the format Triton reads
        serialized = serialize_byte_tensor(array)
        return serialized.item() if serialized.size else b""
    return array.astype(DATATYPES[datatype]).tobytes()


def _request(
    arrays: dict[str, tuple[str, np.ndarray]], *, raw: bool, outputs: tuple[str, ...] = ()
) -> Any:
    """A ModelInferRequest as a client builds it: raw contents, or typed ones."""
    message = service_pb2.ModelInferRequest(model_name="m", id="req-7")
    for name, (datatype, array) in arrays.items():
        tensor = message.inputs.add(name=name, datatype=datatype, shape=array.shape)
        if raw:
            message.raw_input_contents.append(_raw_bytes(array, datatype))
        else:
            getattr(tensor.contents, TYPED_FIELDS[datatype]).extend(array.ravel().tolist())
    for name in outputs:
        message.outputs.add(name=name)
    return message


def _typed_output(tensor: Any) -> np.ndarray:
    values = list(getattr(tensor.contents, TYPED_FIELDS[tensor.datatype]))
    if tensor.datatype == "BYTES":
        return _object_array(values, tuple(tensor.shape))
    return np.array(values, dtype=DATATYPES[tensor.datatype]).reshape(tuple(tensor.shape))


# ------------------------------------------------------------------------------------ requests


@given(data=st.data(), datatype=st.sampled_from(list(DATATYPES)), raw=st.booleans())
@ROUND_TRIP
def test_every_datatype_decodes_raw_and_typed(
    data: st.DataObject, datatype: str, raw: bool
) -> None:
    raw = raw or datatype == "FP16"  # no typed field carries FP16
    array = data.draw(_arrays(datatype))
    request = decode_infer_request(_request({"x": (datatype, array)}, raw=raw))
    (given,) = request.inputs
    assert (given.name, given.datatype, given.shape) == ("x", datatype, array.shape)
    assert given.data.dtype == DATATYPES[datatype] and given.data.shape == array.shape
    np.testing.assert_array_equal(given.data, array)
    assert request.id == "req-7" and request.outputs is None
    assert request.binary_output is raw and not request.is_raw  # not HTTP's raw binary request


@given(data=st.data(), datatype=st.sampled_from(list(DATATYPES)), raw=st.booleans())
@ROUND_TRIP
def test_every_datatype_encodes_raw_and_typed(
    data: st.DataObject, datatype: str, raw: bool
) -> None:
    array = data.draw(_arrays(datatype))
    response = encode_infer_response(
        model_name="m", model_version="1", request_id=None, outputs=[("y", array)], raw=raw
    )
    (tensor,) = response.outputs
    assert (tensor.name, tensor.datatype, tuple(tensor.shape)) == ("y", datatype, array.shape)
    if raw or datatype == "FP16":
        got = InferResult(response).as_numpy("y")  # stock tritonclient reads it
    else:
        assert not response.raw_output_contents
        got = _typed_output(tensor)
    np.testing.assert_array_equal(got, array)


def test_bytes_raw_contents_are_length_prefixed_little_endian() -> None:
    text = _object_array([b"ab", b"", "w\u00f6".encode()], (3, 1))
    request = decode_infer_request(_request({"t": ("BYTES", text)}, raw=True))
    assert request.inputs[0].data.tolist() == [[b"ab"], [b""], ["w\u00f6".encode()]]
    strings = _object_array(["ab", "w\u00f6"], (2,))  # onnxruntime answers str elements
    response = encode_infer_response(
        model_name="m", model_version="1", request_id="r", outputs=[("t", strings)], raw=True
    )
    wire = b"\x02\x00\x00\x00ab\x03\x00\x00\x00w\xc3\xb6"
    assert response.raw_output_contents[0] == wire
    assert deserialize_bytes_tensor(wire).tolist() == [b"ab", "w\u00f6".encode()]
    typed = encode_infer_response(
        model_name="m", model_version="1", request_id=None, outputs=[("t", strings)], raw=False
    )
    assert list(typed.outputs[0].contents.bytes_contents) == [b"ab", "w\u00f6".encode()]


def test_an_fp16_output_makes_the_whole_answer_raw() -> None:
    outputs: list[tuple[str, np.ndarray]] = [
        ("a", np.ones(2, np.float32)),
        ("h", np.ones(2, np.float16)),
    ]
    response = encode_infer_response(
        model_name="m", model_version="1", request_id=None, outputs=outputs, raw=False
    )
    assert len(response.raw_output_contents) == 2
    assert not response.outputs[0].contents.ListFields()
    assert InferResult(response).as_numpy("h").dtype == np.float16


def test_outputs_and_parameters_are_carried() -> None:
    message = _request({"x": ("FP32", np.ones((1, 8), np.float32))}, raw=True, outputs=("probs",))
    message.parameters["priority"].uint64_param = 1  # as tritonclient.grpc sends them
    message.parameters["timeout"].int64_param = 1500
    message.parameters["tag"].string_param = "a"
    message.parameters["flag"].bool_param = True
    message.parameters["ratio"].double_param = 0.5
    request = decode_infer_request(message)
    assert request.parameters == {
        "priority": 1,
        "timeout": 1500,
        "tag": "a",
        "flag": True,
        "ratio": 0.5,
    }
    assert [(o.name, o.binary) for o in request.outputs or []] == [("probs", True)]
    model = ModelInfo(
        name="m",
        version="1",
        inputs=(TensorSpec("x", "FP32", (8,)),),
        outputs=(TensorSpec("logits", "FP32", (3,)), TensorSpec("probs", "FP32", (3,))),
        batchable=True,
        max_request_rows=64,
        platform="onnxruntime_onnx",
        backend="onnxruntime",
    )
    plan = plan_request(request, model)
    assert (plan.outputs, plan.priority, plan.timeout_s, plan.rows) == (["probs"], 1, 0.0015, 1)
    empty = service_pb2.ModelInferRequest()
    empty.parameters["unset"].SetInParent()
    assert parameters_of(empty.parameters) == {"unset": None}


def _bad(mutate: Any) -> Any:
    message = _request({"x": ("INT32", np.arange(4, dtype=np.int32).reshape(2, 2))}, raw=False)
    mutate(message)
    return message


def _typed_int8(message: Any) -> None:
    message.inputs[0].datatype = "INT8"
    message.inputs[0].contents.int_contents[0] = 300


def _two_outputs(message: Any) -> None:
    message.outputs.add(name="y")
    message.outputs.add(name="y")


def _raw_for_one_of_two(message: Any) -> None:
    message.inputs.add(name="z", datatype="INT32", shape=[1])
    message.raw_input_contents.append(b"\0" * 16)


def _raw(datatype: str, raw: bytes, shape: tuple[int, ...], typed: bool = False) -> Any:
    message = service_pb2.ModelInferRequest()
    tensor = message.inputs.add(name="x", datatype=datatype, shape=shape)
    message.raw_input_contents.append(raw)
    if typed:
        tensor.contents.int_contents.append(1)
    return message


BAD: list[tuple[str, Any, str]] = [
    ("unknown datatype", _bad(lambda m: setattr(m.inputs[0], "datatype", "INT4")), "INT4"),
    ("bf16", _bad(lambda m: setattr(m.inputs[0], "datatype", "BF16")), "bfloat16"),
    ("negative dim", _bad(lambda m: m.inputs[0].shape.__setitem__(0, -1)), "negative dim"),
    ("too many dims", _bad(lambda m: m.inputs[0].shape.extend([1] * 40)), "at most 32"),
    ("huge shape", _bad(lambda m: m.inputs[0].shape.extend([2**40, 2**40])), "too large"),
    ("count", _bad(lambda m: m.inputs[0].shape.__setitem__(0, 3)), "needs 6"),
    ("wrong field", _bad(lambda m: setattr(m.inputs[0], "datatype", "FP32")), "fp32_contents"),
    ("out of range", _bad(_typed_int8), "outside INT8's range"),
    ("typed fp16", _bad(lambda m: setattr(m.inputs[0], "datatype", "FP16")), "raw_input_contents"),
    ("duplicate input", _bad(lambda m: m.inputs.append(m.inputs[0])), "given more than once"),
    ("duplicate output", _bad(_two_outputs), "asked for more than once"),
    (
        "shared memory",
        _bad(lambda m: m.inputs[0].parameters["shared_memory_region"].SetInParent()),
        "shared memory",
    ),
    ("raw for some", _bad(_raw_for_one_of_two), "1 entries for 2 inputs"),
    ("raw and typed", _raw("INT32", b"\0" * 4, (1,), typed=True), "send one"),
    ("raw count", _raw("FP32", b"\0" * 12, (2, 2)), "need 16"),
    ("raw bool", _raw("BOOL", b"\0\2", (2,)), "BOOL"),
    ("bytes short", _raw("BYTES", b"\1\0\0\0a\5\0\0\0b", (2,)), "claims 5 bytes"),
    ("bytes prefix", _raw("BYTES", b"\1\0\0\0a\1\0", (2,)), "cannot hold"),
    ("bytes cut", _raw("BYTES", b"\1\0\0\0a\1\0\0", (2,)), "element 1's length"),
    ("bytes extra", _raw("BYTES", b"\0" * 8 + b"zz", (2,)), "2 bytes follow"),
    ("bytes count", _raw("BYTES", b"\0" * 4, (1 << 40,)), "cannot hold"),
]


@pytest.mark.parametrize(("case", "message", "match"), BAD, ids=[b[0] for b in BAD])
def test_malformed_requests_raise_protocol_error(case: str, message: Any, match: str) -> None:
    with pytest.raises(ProtocolError, match=match) as exc:
        decode_infer_request(message)
    assert str(exc.value)


def test_an_output_numpy_cannot_carry_is_a_protocol_error() -> None:
    for array in (np.ones(2, np.complex64), _object_array([1, 2], (2,))):
        with pytest.raises(ProtocolError):
            encode_infer_response(
                model_name="m", model_version="1", request_id=None, outputs=[("y", array)], raw=True
            )


# ----------------------------------------------------------------------------------- documents


def test_config_with_a_version_triton_cannot_number_drops_the_version_policy() -> None:
    document = {"name": "m", "version_policy": {"specific": {"versions": ["v2"]}}}
    assert not model_config_response(document).config.HasField("version_policy")
    document["version_policy"] = {"specific": {"versions": ["2"]}}
    config = model_config_response(document).config
    assert list(config.version_policy.specific.versions) == [2]


def test_statistics_become_model_statistics_messages() -> None:
    zero = {"count": 0, "ns": 0}
    entry = {
        "name": "m",
        "version": "1",
        "inference_count": 5,
        "execution_count": 2,
        "inference_stats": {"success": {"count": 3, "ns": 70}, "fail": zero},
        "batch_stats": [{"batch_size": 4, "compute_infer": {"count": 1, "ns": 9}}],
        "memory_usage": [],
    }
    (stats,) = statistics_response([entry]).model_stats
    assert (stats.name, stats.inference_count, stats.execution_count) == ("m", 5, 2)
    assert stats.inference_stats.success.count == 3 and stats.batch_stats[0].batch_size == 4
