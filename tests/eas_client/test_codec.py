"""The OIP codec: round trips, wire compatibility with tritonclient, bad input, fuzzing."""

from __future__ import annotations

import math
import tracemalloc
from typing import Any, Literal

import numpy as np
import orjson
import pytest
import tritonclient.http as triton_http
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import eas_client
from eas_client import (
    DATATYPES,
    InferRequest,
    ProtocolError,
    RequestInput,
    datatype_of,
    decode_error,
    decode_request,
    decode_response,
    encode_error,
    encode_request,
    encode_response,
    resolve_raw_input,
)

ROUND_TRIP = settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
Triton = triton_http.InferenceServerClient

# ------------------------------------------------------------------------------------ strategies

FLOAT_WIDTHS: dict[int, Literal[16, 32, 64]] = {2: 16, 4: 32, 8: 64}
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


def object_array(items: list[Any], shape: tuple[int, ...]) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)


def arrays(datatype: str, *, json: bool) -> st.SearchStrategy[np.ndarray]:
    """Arrays of a datatype; ``json``: values that JSON carries exactly (UTF-8 text, no +-inf)."""
    if datatype == "BYTES":
        element = st.text(max_size=6).map(str.encode) if json else st.binary(max_size=6)
        return SHAPES.flatmap(
            lambda shape: st.lists(
                element, min_size=math.prod(shape), max_size=math.prod(shape)
            ).map(lambda items: object_array(items, shape))
        )
    dtype = DATATYPES[datatype]
    if dtype.kind == "f":
        floats = st.floats(width=FLOAT_WIDTHS[dtype.itemsize], allow_infinity=not json)
        return hnp.arrays(dtype, SHAPES, elements=floats)
    return hnp.arrays(dtype, SHAPES)


def tensors(*, json: bool) -> st.SearchStrategy[np.ndarray]:
    return st.sampled_from(list(DATATYPES)).flatmap(lambda d: arrays(d, json=json))


NAMES = st.text(min_size=1, max_size=5)


def named(strategy: st.SearchStrategy[Any], max_size: int = 4) -> st.SearchStrategy[list[Any]]:
    return st.lists(st.tuples(NAMES, strategy), max_size=max_size, unique_by=lambda p: p[0])


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    if expected.dtype.kind in "OSU":
        assert actual.dtype == object
        as_bytes = [v.encode() if isinstance(v, str) else bytes(v) for v in expected.ravel()]
        assert actual.ravel().tolist() == as_bytes
    else:
        assert actual.dtype == DATATYPES[datatype_of(expected)]
        np.testing.assert_array_equal(actual, expected, strict=False)


def req(doc: Any, tail: bytes = b"", *, header: bool | None = None) -> tuple[bytes, int | None]:
    """A request body from a JSON document and a binary tail."""
    head = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    with_header = bool(tail) if header is None else header
    return head + tail, len(head) if with_header else None


X = {"name": "x", "shape": [2], "datatype": "INT32", "data": [1, 2]}

# ----------------------------------------------------------------------------------- round trips


@ROUND_TRIP
@given(
    inputs=st.data(),
    binary_inputs=st.booleans(),
    binary_outputs=st.booleans(),
    outputs=st.none() | st.lists(NAMES, max_size=3, unique=True),
    request_id=st.none() | st.text(max_size=8),
)
def test_request_round_trip(inputs, binary_inputs, binary_outputs, outputs, request_id):
    pairs = inputs.draw(named(tensors(json=not binary_inputs)))
    body, header_length = encode_request(
        pairs,
        outputs=outputs,
        binary_inputs=binary_inputs,
        binary_outputs=binary_outputs,
        request_id=request_id,
        parameters={"priority": 2},
    )
    assert (header_length is not None) == (binary_inputs and bool(pairs))
    request = decode_request(body, header_length)
    assert request.id == request_id
    assert request.parameters["priority"] == 2
    assert [i.name for i in request.inputs] == [name for name, _ in pairs]
    for got, (_, array) in zip(request.inputs, pairs, strict=True):
        assert got.datatype == datatype_of(array)
        assert got.shape == array.shape
        assert_same(got.data, array)
        assert ("binary_data_size" in got.parameters) == binary_inputs
    if outputs:
        assert request.outputs is not None
        assert [(o.name, o.binary) for o in request.outputs] == [
            (n, binary_outputs) for n in outputs
        ]
        assert not request.binary_output
    else:
        assert request.outputs is None
        assert request.binary_output == binary_outputs
    for name in outputs or ["anything"]:
        assert request.wants_binary(name) == binary_outputs


@ROUND_TRIP
@given(outputs=st.data(), selection=st.sampled_from(["all", "none", "set", "predicate"]))
def test_response_round_trip_and_tritonclient_reads_it(outputs, selection):
    pairs = outputs.draw(named(tensors(json=selection != "all")))
    chosen = {name for name, _ in pairs if outputs.draw(st.booleans())}
    binary: Any = {
        "all": True,
        "none": False,
        "set": chosen,
        "predicate": chosen.__contains__,
    }[selection]
    is_binary = {
        name: selection == "all" or (selection in ("set", "predicate") and name in chosen)
        for name, _ in pairs
    }
    # JSON outputs must be text for BYTES and finite for floats: redraw those as JSON-safe.
    pairs = [
        (name, array if is_binary[name] else outputs.draw(arrays(datatype_of(array), json=True)))
        for name, array in pairs
    ]
    body, header_length = encode_response(
        model_name="m",
        model_version="3",
        request_id="req-1",
        outputs=pairs,
        binary=binary,
        parameters={"sequence_id": 7},
    )
    assert (header_length is not None) == any(is_binary.values())
    response = decode_response(body, header_length)
    assert (response.model_name, response.model_version, response.id) == ("m", "3", "req-1")
    assert response.parameters == {"sequence_id": 7}
    assert list(response.outputs) == [name for name, _ in pairs]
    result = Triton.parse_response_body(body, header_length=header_length)
    for name, array in pairs:
        assert_same(response.outputs[name], array)
        theirs = result.as_numpy(name)
        if array.dtype == object and not is_binary[name]:
            theirs = object_array([s.encode() for s in theirs.ravel()], theirs.shape)
        assert_same(theirs, array)
        entry = result.get_output(name)
        assert ("binary_data_size" in entry.get("parameters", {})) == is_binary[name]


def test_response_without_id_or_version_and_pure_json():
    body, header_length = encode_response(
        model_name="m",
        model_version=None,
        request_id=None,
        outputs=[("y", np.array([1.5, 2.5], dtype=np.float32))],
        binary=False,
    )
    assert header_length is None
    assert orjson.loads(body) == {
        "model_name": "m",
        "outputs": [{"name": "y", "shape": [2], "datatype": "FP32", "data": [1.5, 2.5]}],
    }
    response = decode_response(body, None)
    assert response.model_version is None and response.id is None


def test_non_finite_floats_in_json_are_null_and_read_back_as_nan():
    array = np.array([np.nan, np.inf, -np.inf, 1.0], dtype=np.float32)
    body, _ = encode_response(
        model_name="m", model_version=None, request_id=None, outputs=[("y", array)], binary=False
    )
    assert b'"data":[null,null,null,1.0]' in body
    np.testing.assert_array_equal(decode_response(body, None).outputs["y"], [np.nan] * 3 + [1.0])
    binary_body, length = encode_response(
        model_name="m", model_version=None, request_id=None, outputs=[("y", array)], binary=True
    )
    np.testing.assert_array_equal(decode_response(binary_body, length).outputs["y"], array)


def test_big_endian_and_strided_arrays_are_sent_little_endian_and_row_major():
    big = np.arange(6, dtype=">i4").reshape(2, 3)
    strided = np.arange(12, dtype=np.float64).reshape(3, 4)[:, ::2].T
    for binary in (True, False):
        body, length = encode_request({"b": big, "s": strided}, binary_inputs=binary)
        request = decode_request(body, length)
        np.testing.assert_array_equal(request.inputs[0].data, big)
        np.testing.assert_array_equal(request.inputs[1].data, strided)
        assert request.inputs[0].data.dtype == np.dtype("<i4")
    body, length = encode_request({"b": big})
    assert body[length:] == np.arange(6, dtype="<i4").tobytes()


def test_str_arrays_are_bytes_tensors_in_utf8():
    array = np.array([["é", ""], ["ab", "\x00z"]])
    for binary in (True, False):
        body, length = encode_request({"s": array}, binary_inputs=binary)
        got = decode_request(body, length).inputs[0]
        assert got.datatype == "BYTES"
        assert got.data.tolist() == [["é".encode(), b""], [b"ab", b"\x00z"]]


def test_requests_with_no_inputs_and_empty_outputs_list_ask_for_everything():
    body, length = encode_request({}, outputs=[])
    assert length is None
    assert orjson.loads(body) == {"inputs": [], "parameters": {"binary_data_output": True}}
    request = decode_request(body, length)
    assert request.inputs == [] and request.outputs is None and request.binary_output


# ------------------------------------------------------------------------- tritonclient interop


def triton_request(
    inputs: list[tuple[str, np.ndarray, bool]],
    outputs: list[tuple[str, bool]] | None,
    request_id: str,
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    objects = []
    for name, array, binary in inputs:
        tensor = triton_http.InferInput(name, list(array.shape), datatype_of(array))
        tensor.set_data_from_numpy(array, binary_data=binary)
        objects.append(tensor)
    requested = (
        [triton_http.InferRequestedOutput(n, binary_data=b) for n, b in outputs]
        if outputs is not None
        else None
    )
    return Triton.generate_request_body(  # type: ignore[no-any-return]
        objects, outputs=requested, request_id=request_id, parameters=parameters
    )


@st.composite
def mixed_inputs(draw: st.DrawFn) -> list[tuple[str, np.ndarray, bool]]:
    out = []
    for name in draw(st.lists(NAMES, max_size=4, unique=True)):
        binary = draw(st.booleans())
        out.append((name, draw(tensors(json=not binary)), binary))
    return out


@ROUND_TRIP
@given(
    inputs=mixed_inputs(),
    outputs=st.none()
    | st.lists(st.tuples(NAMES, st.booleans()), max_size=3, unique_by=lambda p: p[0]),
    request_id=st.text(max_size=6),
)
def test_decodes_tritonclient_requests_with_mixed_binary_and_json_inputs(
    inputs, outputs, request_id
):
    body, header_length = triton_request(inputs, outputs, request_id, {"tag": "a"})
    request = decode_request(body, header_length)
    assert request.id == (request_id or None)
    assert request.parameters["tag"] == "a"
    assert [i.name for i in request.inputs] == [name for name, _, _ in inputs]
    for got, (_, array, _) in zip(request.inputs, inputs, strict=True):
        assert got.datatype == datatype_of(array)
        assert_same(got.data, array)
    if outputs:
        assert request.outputs is not None
        assert [(o.name, o.binary) for o in request.outputs] == outputs
        for name, binary in outputs:
            assert request.wants_binary(name) is binary
    else:  # tritonclient asks for every output, in binary
        assert request.outputs is None and request.binary_output
        assert request.wants_binary("any")


@ROUND_TRIP
@given(
    pairs=named(tensors(json=False)),
    outputs=st.none() | st.lists(st.from_regex(r"[a-z_0-9]{1,6}", fullmatch=True), max_size=3),
    binary_outputs=st.booleans(),
)
def test_binary_requests_are_byte_identical_to_tritonclient(pairs, outputs, binary_outputs):
    # rapidjson escapes non-ASCII (orjson does not) and writes \u000B where orjson writes \u000b
    assume(all(name.isascii() and name.isprintable() for name, _ in pairs))
    ours = encode_request(pairs, outputs=outputs, binary_outputs=binary_outputs, request_id="r")
    requested = [(name, binary_outputs) for name in outputs] if outputs else None
    assume(requested is not None or binary_outputs)  # tritonclient cannot ask for all in JSON
    theirs = triton_request([(n, a, True) for n, a in pairs], requested, "r")
    assert ours == theirs


@pytest.mark.parametrize(
    "array",
    [
        np.array([[1, -2], [3, 4]], dtype=np.int64),
        np.array([0, 2**64 - 1], dtype=np.uint64),
        np.array([True, False]),
        np.array([b"ab", b"c"], dtype=object),
        np.array([0.5, -2.25], dtype=np.float64),
        np.zeros((0, 3), dtype=np.int8),
    ],
)
def test_json_requests_are_byte_identical_to_tritonclient(array):
    ours = encode_request({"x": array}, binary_inputs=False, outputs=["y"])
    theirs = triton_request([("x", array, False)], [("y", True)], "")
    assert ours == theirs


def test_tritonclient_nan_and_infinity_tokens_are_read():
    array = np.array([np.nan, np.inf, -np.inf, 0.1], dtype=np.float32)
    body, length = triton_request([("x", array, False)], None, "")
    assert b"NaN" in body and b"Infinity" in body  # not JSON; Triton's parser takes it
    np.testing.assert_array_equal(decode_request(body, length).inputs[0].data, array)


# ------------------------------------------------------------------------------ JSON data rules


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "expected"),
    [
        ("INT32", [2, 2], [[1, 2], [3, 4]], [[1, 2], [3, 4]]),
        ("INT32", [2, 2], [1, 2, 3, 4], [[1, 2], [3, 4]]),
        ("INT32", [4], [[1, 2], [3, 4]], [1, 2, 3, 4]),
        ("FP32", [3], [1, 2.5, None], [1.0, 2.5, np.nan]),
        ("FP16", [2], [65504, -1], [65504.0, -1.0]),
        ("UINT64", [2], [0, 2**64 - 1], [0, 2**64 - 1]),
        ("INT64", [2], [-(2**63), 2**63 - 1], [-(2**63), 2**63 - 1]),
        ("INT8", [2], [-128, 127], [-128, 127]),
        ("BOOL", [1, 2], [[True, False]], [[True, False]]),
        ("BYTES", [2, 1], [["é"], [""]], [["é".encode()], [b""]]),
        ("FP64", [0, 5], [], np.zeros((0, 5))),
        ("BYTES", [0], [], []),
        ("INT16", [], [7], 7),
    ],
)
def test_json_data_nested_or_flat(datatype, shape, data, expected):
    body, length = req(
        {"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]}
    )
    got = decode_request(body, length).inputs[0]
    assert got.data.shape == tuple(shape)
    assert got.data.dtype == DATATYPES[datatype]
    if datatype == "BYTES":
        assert got.data.tolist() == expected
    else:
        np.testing.assert_array_equal(got.data, np.array(expected, dtype=DATATYPES[datatype]))


# ------------------------------------------------------------------------------------ raw binary


def test_raw_binary_request_is_one_nameless_input():
    payload = np.arange(6, dtype="<f4").tobytes()
    request = decode_request(payload, 0)
    assert request.is_raw and request.binary_output and request.outputs is None
    (raw,) = request.inputs
    assert (raw.name, raw.datatype, raw.shape) == ("", "UINT8", (24,))
    typed = resolve_raw_input(raw, name="x", datatype="FP32", shape=[1, -1])
    assert (typed.name, typed.datatype, typed.shape) == ("x", "FP32", (1, 6))
    np.testing.assert_array_equal(typed.data, np.arange(6, dtype=np.float32).reshape(1, 6))
    fixed = resolve_raw_input(raw, name="x", datatype="INT16", shape=[3, 4])
    assert fixed.shape == (3, 4)
    text = resolve_raw_input(
        decode_request(b"\xffhello", "0").inputs[0], name="t", datatype="BYTES", shape=[1]
    )
    assert text.data.tolist() == [b"\xffhello"]
    assert not decode_request(*req({"inputs": [X]})).is_raw
    # a JSON input named "" is just a badly named input, not a raw body (the schema fuzzer sent
    # one, which the server then typed as the model's input)
    nameless = {"name": "", "datatype": "BOOL", "shape": [0], "data": []}
    assert not decode_request(*req({"inputs": [nameless]})).is_raw


@pytest.mark.parametrize(
    ("datatype", "shape", "match"),
    [
        ("FP32", [-1, -1], "more than one variable dim"),
        ("FP64", [1, -1], "not a whole number"),
        ("FP32", [2, 2], "needs 16"),
        ("BYTES", [2], "must have shape \\[1\\]"),
        ("BOOL", [-1], "other than 0 and 1"),
        ("BF16", [-1], "not supported"),
    ],
)
def test_raw_binary_request_that_does_not_fit(datatype, shape, match):
    raw = decode_request(b"\x02" * 12, 0).inputs[0]
    with pytest.raises(ProtocolError, match=match):
        resolve_raw_input(raw, name="x", datatype=datatype, shape=shape)


# ------------------------------------------------------------------------------------- bad input

BYTES_TWO = b"\x01\x00\x00\x00a\x01\x00\x00\x00b"
BAD_REQUESTS: list[tuple[str, bytes, Any, str]] = [
    ("invalid json", b"{not json", None, "request is not valid JSON"),
    ("not an object", b"[1, 2]", None, "request must be a JSON object, got an array"),
    ("empty body", b"", None, "not valid JSON"),
    ("missing inputs", *req({}), "request has no 'inputs' array"),
    ("inputs not a list", *req({"inputs": {}}), "'inputs' must be an array, got an object"),
    ("input not an object", *req({"inputs": [3]}), r"inputs\[0\] must be an object"),
    ("missing name", *req({"inputs": [{"shape": [1]}]}), r"inputs\[0\] needs a 'name' string"),
    ("name not a string", *req({"inputs": [{"name": 1}]}), "needs a 'name' string, got an integer"),
    ("missing datatype", *req({"inputs": [{"name": "x"}]}), "input 'x' needs a 'datatype'"),
    ("missing shape", *req({"inputs": [{"name": "x", "datatype": "FP32"}]}), "needs a 'shape'"),
    ("duplicate input", *req({"inputs": [X, X]}), "input 'x' appears more than once"),
    ("negative dim", *req({"inputs": [{**X, "shape": [-1]}]}), "dims must be non-negative"),
    ("float dim", *req({"inputs": [{**X, "shape": [2.0]}]}), "has 2.0; dims must be"),
    ("bool dim", *req({"inputs": [{**X, "shape": [True, 2]}]}), "has True; dims must be"),
    ("string dim", *req({"inputs": [{**X, "shape": ["2"]}]}), "dims must be non-negative"),
    ("shape not a list", *req({"inputs": [{**X, "shape": 2}]}), "'shape' must be an array"),
    ("too many dims", *req({"inputs": [{**X, "shape": [1] * 33}]}), "at most 32"),
    ("absurd shape", *req({"inputs": [{**X, "shape": [0, 2**62, 2**62]}]}), "too large"),
    ("unknown datatype", *req({"inputs": [{**X, "datatype": "FP8"}]}), "unknown datatype 'FP8'"),
    ("lowercase datatype", *req({"inputs": [{**X, "datatype": "int32"}]}), "unknown datatype"),
    ("BF16", *req({"inputs": [{**X, "datatype": "BF16"}]}), "BF16' is not supported"),
    ("datatype not str", *req({"inputs": [{**X, "datatype": 5}]}), "unknown datatype 5"),
    (
        "data missing",
        *req({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}),
        "input 'x' has neither 'data' nor parameters.binary_data_size",
    ),
    (
        "null data",
        *req({"inputs": [{**X, "data": None, "parameters": {"shared_memory_region": "r"}}]}),
        "'data' must be an array, got null",
    ),
    (
        "shared memory without data",
        *req(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [1],
                        "datatype": "FP32",
                        "parameters": {"shared_memory_region": "r"},
                    }
                ]
            }
        ),
        "shared memory is not supported",
    ),
    (
        "count mismatch",
        *req({"inputs": [{**X, "data": [1, 2, 3]}]}),
        "has 2 elements but 'data' has 3",
    ),
    (
        "data not a list",
        *req({"inputs": [{**X, "data": 5}]}),
        "'data' must be an array, got an integer",
    ),
    ("ragged", *req({"inputs": [{**X, "shape": [3], "data": [[1], [2, 3]]}]}), "ragged"),
    ("mixed nesting", *req({"inputs": [{**X, "data": [1, [2]]}]}), "ragged"),
    (
        "string in INT64",
        *req({"inputs": [{**X, "datatype": "INT64", "data": [1, "2"]}]}),
        "INT64 data must be JSON integers, got a string",
    ),
    (
        "float in INT32",
        *req({"inputs": [{**X, "data": [1, 2.5]}]}),
        "INT32 data must be JSON integers, got a number",
    ),
    ("integral float in INT32", *req({"inputs": [{**X, "data": [1, 2.0]}]}), "got a number"),
    ("bool in INT32", *req({"inputs": [{**X, "data": [1, True]}]}), "got a boolean"),
    ("null in INT32", *req({"inputs": [{**X, "data": [1, None]}]}), "got null"),
    ("object in INT32", *req({"inputs": [{**X, "data": [1, {}]}]}), "got an object"),
    (
        "int in BOOL",
        *req({"inputs": [{**X, "datatype": "BOOL", "data": [1, 0]}]}),
        "BOOL data must be JSON booleans, got an integer",
    ),
    (
        "bool in FP32",
        *req({"inputs": [{**X, "datatype": "FP32", "data": [1.0, False]}]}),
        "FP32 data must be JSON numbers, got a boolean",
    ),
    (
        "string in FP32",
        *req({"inputs": [{**X, "datatype": "FP32", "data": ["1.5", 2]}]}),
        "got a string",
    ),
    (
        "number in BYTES",
        *req({"inputs": [{**X, "datatype": "BYTES", "data": ["a", 1]}]}),
        "BYTES data must be JSON strings, got an integer",
    ),
    (
        "INT8 overflow",
        *req({"inputs": [{**X, "datatype": "INT8", "data": [1, 300]}]}),
        r"value 300 is out of range for INT8 \[-128, 127\]",
    ),
    (
        "UINT8 negative",
        *req({"inputs": [{**X, "datatype": "UINT8", "data": [-1, 3]}]}),
        "value -1 is out of range for UINT8",
    ),
    (
        "INT64 overflow",
        *req({"inputs": [{**X, "datatype": "INT64", "data": [0, 2**63]}]}),
        "out of range for INT64",
    ),
    (
        "UINT64 negative",
        *req({"inputs": [{**X, "datatype": "UINT64", "data": [-1, 2**63]}]}),
        "out of range for UINT64",
    ),
    (
        "past 64 bits",
        *req(
            b'{"inputs":[{"name":"x","shape":[1],"datatype":"UINT64","data":[18446744073709551616]}]}'
        ),
        "got a number",
    ),
    (
        "FP16 overflow",
        *req({"inputs": [{**X, "datatype": "FP16", "data": [1.0, 1e6]}]}),
        "out of range for FP16",
    ),
    (
        "FP32 overflow",
        *req({"inputs": [{**X, "datatype": "FP32", "data": [1.0, 1e300]}]}),
        "out of range for FP32",
    ),
    (
        "binary size mismatch",
        *req(
            {"inputs": [{**X, "data": None} | {"parameters": {"binary_data_size": 4}}]}, b"\0" * 4
        ),
        "has both 'data' and binary_data_size",
    ),
    (
        "binary size not shape",
        *req(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [2],
                        "datatype": "INT32",
                        "parameters": {"binary_data_size": 4},
                    }
                ]
            },
            b"\0" * 4,
        ),
        r"binary_data_size is 4 but shape \[2\] of INT32 needs 8 bytes",
    ),
    (
        "binary size negative",
        *req(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [0],
                        "datatype": "INT32",
                        "parameters": {"binary_data_size": -1},
                    }
                ]
            },
            b"\0",
        ),
        "binary_data_size must be a non-negative integer, got an integer",
    ),
    (
        "binary size string",
        *req(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [1],
                        "datatype": "INT8",
                        "parameters": {"binary_data_size": "1"},
                    }
                ]
            },
            b"\0",
        ),
        "binary_data_size must be a non-negative integer, got a string",
    ),
    (
        "binary truncated",
        *req(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [2],
                        "datatype": "INT32",
                        "parameters": {"binary_data_size": 8},
                    }
                ]
            },
            b"\0" * 4,
        ),
        "binary_data_size is 8 but only 4 bytes of binary data are left",
    ),
    (
        "binary without header length",
        *req(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [2],
                        "datatype": "INT32",
                        "parameters": {"binary_data_size": 8},
                    }
                ]
            }
        ),
        "only 0 bytes of binary data are left after the JSON header",
    ),
    (
        "binary trailing bytes",
        *req(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [1],
                        "datatype": "INT32",
                        "parameters": {"binary_data_size": 4},
                    }
                ]
            },
            b"\0" * 6,
        ),
        "2 bytes after the JSON header belong to no tensor",
    ),
    (
        "trailing bytes after json",
        *req({"inputs": [X]}, b"zz"),
        "2 bytes after the JSON header belong to no tensor",
    ),
    (
        "BYTES prefix past tensor",
        *req(
            {
                "inputs": [
                    {
                        "name": "s",
                        "shape": [2],
                        "datatype": "BYTES",
                        "parameters": {"binary_data_size": 10},
                    }
                ]
            },
            b"\x01\0\0\0a\x64\0\0\0b",
        ),
        "BYTES element 1 declares 100 bytes but only 1 are left in the tensor",
    ),
    (
        "BYTES leftover",
        *req(
            {
                "inputs": [
                    {
                        "name": "s",
                        "shape": [1],
                        "datatype": "BYTES",
                        "parameters": {"binary_data_size": 10},
                    }
                ]
            },
            BYTES_TWO,
        ),
        "5 bytes left over after the last of 1 BYTES elements",
    ),
    (
        "BYTES no room for prefix",
        *req(
            {
                "inputs": [
                    {
                        "name": "s",
                        "shape": [2],
                        "datatype": "BYTES",
                        "parameters": {"binary_data_size": 8},
                    }
                ]
            },
            b"\x03\0\0\0abc\0",
        ),
        "BYTES element 1 has no room for its 4-byte length",
    ),
    (
        "BYTES too small for prefixes",
        *req(
            {
                "inputs": [
                    {
                        "name": "s",
                        "shape": [3],
                        "datatype": "BYTES",
                        "parameters": {"binary_data_size": 10},
                    }
                ]
            },
            BYTES_TWO,
        ),
        "3 BYTES elements need at least 12 bytes",
    ),
    (
        "BOOL byte not 0 or 1",
        *req(
            {
                "inputs": [
                    {
                        "name": "b",
                        "shape": [2],
                        "datatype": "BOOL",
                        "parameters": {"binary_data_size": 2},
                    }
                ]
            },
            b"\x01\x02",
        ),
        "BOOL tensor has bytes other than 0 and 1",
    ),
    ("header beyond body", *req({"inputs": [X]}), "Inference-Header-Content-Length"),
    (
        "header length garbage",
        req({"inputs": [X]})[0],
        "12a",
        "must be a non-negative integer, got '12a'",
    ),
    (
        "header length negative",
        req({"inputs": [X]})[0],
        -3,
        "must be a non-negative integer, got -3",
    ),
    (
        "outputs not a list",
        *req({"inputs": [X], "outputs": {"name": "y"}}),
        "request 'outputs' must be an array",
    ),
    (
        "output not an object",
        *req({"inputs": [X], "outputs": ["y"]}),
        r"outputs\[0\] must be an object",
    ),
    (
        "output without name",
        *req({"inputs": [X], "outputs": [{}]}),
        r"outputs\[0\] needs a 'name' string",
    ),
    (
        "duplicate output",
        *req({"inputs": [X], "outputs": [{"name": "y"}, {"name": "y"}]}),
        "output 'y' is asked for more than once",
    ),
    (
        "output parameters",
        *req({"inputs": [X], "outputs": [{"name": "y", "parameters": []}]}),
        "output 'y': 'parameters' must be an object",
    ),
    (
        "binary_data not bool",
        *req({"inputs": [X], "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]}),
        "parameter 'binary_data' must be a boolean",
    ),
    (
        "request parameters",
        *req({"inputs": [X], "parameters": "p"}),
        "request: 'parameters' must be an object, got a string",
    ),
    (
        "binary_data_output not bool",
        *req({"inputs": [X], "parameters": {"binary_data_output": "yes"}}),
        "'binary_data_output' must be a boolean",
    ),
    (
        "input parameters",
        *req({"inputs": [{**X, "parameters": [1]}]}),
        "input 'x': 'parameters' must be an object",
    ),
    (
        "id not a string",
        *req({"id": 5, "inputs": [X]}),
        "request 'id' must be a string, got an integer",
    ),
    (
        "huge shape binary",
        *req(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [2**40],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": 2**42},
                    }
                ]
            },
            b"\0" * 16,
        ),
        "binary_data_size is 4398046511104 but only 16 bytes",
    ),
    (
        "huge shape binary small size",
        *req(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [2**40],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": 4},
                    }
                ]
            },
            b"\0" * 4,
        ),
        "needs 4398046511104 bytes",
    ),
    (
        "huge shape JSON",
        *req({"inputs": [{**X, "shape": [2**40], "data": [1]}]}),
        "has 1099511627776 elements but 'data' has 1",
    ),
]
# "header beyond body": claim one byte more than the body has.
BAD_REQUESTS = [
    (n, b, (len(b) + 1 if n == "header beyond body" else h), m) for n, b, h, m in BAD_REQUESTS
]


@pytest.mark.parametrize(
    ("body", "header_length", "match"),
    [c[1:] for c in BAD_REQUESTS],
    ids=[c[0] for c in BAD_REQUESTS],
)
def test_bad_requests_are_protocol_errors_that_say_what_is_wrong(body, header_length, match):
    with pytest.raises(ProtocolError, match=match):
        decode_request(body, header_length)


@pytest.mark.parametrize(
    ("body", "header_length", "match"),
    [
        (b'{"outputs": 1}', None, "response 'outputs' must be an array"),
        (b'{"model_name": 1, "outputs": []}', None, "response 'model_name' must be a string"),
        (b'{"outputs": []}', 0, "only meaningful for requests"),
        (b'{"outputs": []}xx', 15, "2 bytes after the JSON header"),
        (
            b'{"outputs": [{"name": "y", "shape": [1], "datatype": "FP32", "data": ["a"]}]}',
            None,
            "got a string",
        ),
        (b'"error"', None, "response must be a JSON object, got a string"),
    ],
)
def test_bad_responses_are_protocol_errors(body, header_length, match):
    with pytest.raises(ProtocolError, match=match):
        decode_response(body, header_length)


def test_unencodable_tensors_are_protocol_errors():
    with pytest.raises(
        ProtocolError,
        match="not valid UTF-8, which JSON cannot carry; ask for this tensor in binary",
    ):
        encode_response(
            model_name="m",
            model_version=None,
            request_id=None,
            outputs=[("y", np.array([b"\xff"], dtype=object))],
            binary=False,
        )
    with pytest.raises(ProtocolError, match=r"output 'y'.*complex128 has no OIP datatype"):
        encode_response(
            model_name="m",
            model_version=None,
            request_id=None,
            outputs=[("y", np.zeros(1, complex))],
            binary=True,
        )
    with pytest.raises(ProtocolError, match="BYTES element of type int; expected bytes or str"):
        encode_request({"s": np.array([b"a", 3], dtype=object)})
    with pytest.raises(ProtocolError, match="input 'x' must be a numpy array, got list"):
        encode_request({"x": [1, 2]})  # type: ignore[dict-item]


# --------------------------------------------------------------------------------- memory bounds


@pytest.mark.parametrize(
    ("body", "header_length"),
    [
        req(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [2**40],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": 2**42},
                    }
                ]
            },
            b"\0" * 64,
        ),
        req(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [2**20, 2**20],
                        "datatype": "INT8",
                        "parameters": {"binary_data_size": 64},
                    }
                ]
            },
            b"\0" * 64,
        ),
        req(
            {
                "inputs": [
                    {
                        "name": "s",
                        "shape": [2**30],
                        "datatype": "BYTES",
                        "parameters": {"binary_data_size": 64},
                    }
                ]
            },
            b"\0" * 64,
        ),
        req(
            {
                "inputs": [
                    {
                        "name": "s",
                        "shape": [16],
                        "datatype": "BYTES",
                        "parameters": {"binary_data_size": 64},
                    }
                ]
            },
            b"\xff" * 64,
        ),
        req({"inputs": [{"name": "x", "shape": [2**40], "datatype": "FP64", "data": [1.0]}]}),
        req({"inputs": [{"name": "s", "shape": [2**40], "datatype": "BYTES", "data": ["a"]}]}),
        # numpy's own inference would make this a 5001 x 5000-character str array (100 MB).
        req(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [5001],
                        "datatype": "INT64",
                        "data": [1] * 5000 + ["x" * 5000],
                    }
                ]
            }
        ),
    ],
    ids=["fp32", "int8-2d", "bytes-count", "bytes-prefix", "json", "json-bytes", "json-str-bomb"],
)
def test_declared_huge_sizes_fail_before_allocating(body, header_length):
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError):
            decode_request(body, header_length)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(body) + (1 << 20)


# ------------------------------------------------------------------------------------- fuzzing


def decodes_or_protocol_error(body: bytes, header_length: int | None) -> None:
    """decode_request and decode_response raise only ProtocolError, and allocate no more than the
    body's size can justify, whatever sizes the body declares."""
    tracemalloc.start()
    try:
        try:
            request = decode_request(body, header_length)
        except ProtocolError:
            request = None
        try:
            decode_response(body, header_length)
        except ProtocolError:
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * len(body) + (1 << 20)
    if request is not None:
        assert isinstance(request, InferRequest)
        assert sum(i.data.nbytes for i in request.inputs) <= 8 * len(body)


@FUZZ
@given(body=st.binary(max_size=200), header_length=st.none() | st.integers(-1, 210))
def test_fuzz_random_bytes(body, header_length):
    decodes_or_protocol_error(body, header_length)


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=8,
)
INPUT_SPECS = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["x", "y", ""]) | JSON_VALUES,
        "datatype": st.sampled_from([*DATATYPES, "BF16", "fp32"]) | JSON_VALUES,
        "shape": st.lists(st.integers(-2, 2**41) | st.sampled_from([0, 1, 2]), max_size=3)
        | JSON_VALUES,
        "data": st.lists(JSON_SCALARS, max_size=5)
        | st.lists(st.lists(JSON_SCALARS, max_size=2), max_size=3)
        | JSON_VALUES,
        "parameters": st.fixed_dictionaries(
            {},
            optional={
                "binary_data_size": st.integers(-1, 2**41) | st.integers(0, 24) | JSON_VALUES
            },
        )
        | JSON_VALUES,
    },
)
REQUEST_DOCS = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=3) | JSON_VALUES,
        "inputs": st.lists(INPUT_SPECS, max_size=3) | JSON_VALUES,
        "outputs": st.lists(
            st.fixed_dictionaries({"name": NAMES}, optional={"parameters": JSON_VALUES}), max_size=2
        )
        | JSON_VALUES,
        "parameters": st.dictionaries(
            st.sampled_from(["binary_data_output", "priority"]), JSON_SCALARS
        )
        | JSON_VALUES,
    },
)


@FUZZ
@given(
    doc=REQUEST_DOCS,
    tail=st.binary(max_size=32),
    header=st.sampled_from(["exact", "none", "zero", "random"]),
    data=st.data(),
)
def test_fuzz_structured_requests(doc, tail, header, data):
    head = orjson.dumps(doc)
    body = head + tail
    header_length = {
        "exact": len(head),
        "none": None,
        "zero": 0,
        "random": data.draw(st.integers(0, len(body) + 2)),
    }[header]
    decodes_or_protocol_error(body, header_length)


@FUZZ
@given(inputs=mixed_inputs(), data=st.data())
def test_fuzz_mutated_valid_requests(inputs, data):
    body, header_length = triton_request(inputs, None, "id")
    buf = bytearray(body)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "delete", "insert", "truncate", "header"]))
        at = data.draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "flip" and buf:
            buf[at] = data.draw(st.integers(0, 255))
        elif op == "delete":
            del buf[at : at + data.draw(st.integers(1, 8))]
        elif op == "insert":
            buf[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "truncate":
            del buf[at:]
        elif op == "header":
            header_length = data.draw(st.none() | st.integers(0, len(buf) + 4))
    decodes_or_protocol_error(bytes(buf), header_length)


# ---------------------------------------------------------------------------------- errors


def test_error_bodies():
    body = encode_error("model \"m\" has no input 'q'")
    assert orjson.loads(body) == {"error": "model \"m\" has no input 'q'"}
    assert decode_error(body) == "model \"m\" has no input 'q'"
    assert decode_error(b"<html>Bad Gateway</html>") == "<html>Bad Gateway</html>"
    assert decode_error(b'{"detail": "x"}') == '{"detail": "x"}'
    assert decode_error(b"\xff\xfe") == "\ufffd\ufffd"
    assert decode_error(b"") == "empty error body"


def test_server_errors_from_status():
    err = eas_client.ServerError.from_status(503, "Exceeds maximum queue size", retry_after=1.0)
    assert isinstance(err, eas_client.ServiceUnavailable)
    assert (err.status_code, err.message, err.retry_after) == (
        503,
        "Exceeds maximum queue size",
        1.0,
    )
    assert type(eas_client.ServerError.from_status(403, "no")) is eas_client.Unauthorized
    assert type(eas_client.ServerError.from_status(500, "boom")) is eas_client.ServerError
    assert issubclass(eas_client.ProtocolError, ValueError)
    for name in eas_client.__all__:
        obj = getattr(eas_client, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, eas_client.EasClientError)


def test_request_input_fields_are_plain_dataclass_fields():
    item = RequestInput("x", "FP32", (1,), np.zeros(1, np.float32))
    assert item.parameters == {}
    with pytest.raises(AttributeError):
        item.other = 1  # type: ignore[attr-defined]
