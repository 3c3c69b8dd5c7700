"""The Open Inference Protocol (KServe v2) codec, with Triton's binary tensor extension; pure.

Shared by the model server (``decode_request``, ``encode_response``, ``encode_error``) and the
clients (``encode_request``, ``decode_response``, ``decode_error``). No I/O and no HTTP library:
bytes in, dataclasses and numpy arrays out, and back. JSON goes through orjson; binary tensors are
zero-copy ``np.frombuffer`` views of the body.

Body layout: a JSON header, then the binary tensors concatenated in the order their tensors appear
in the header, each marked by ``parameters.binary_data_size``. The HTTP header
``Inference-Header-Content-Length`` gives the JSON header's size and is needed whenever a binary
part follows; without it the whole body is JSON. The wire format is tritonclient.http's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from ._datatypes import dtype_of
from ._errors import ProtocolError
from ._tensors import TensorReader, describe, parameters_of, tensor_entry

__all__ = [
    "InferRequest",
    "InferResponse",
    "RequestInput",
    "RequestedOutput",
    "decode_error",
    "decode_request",
    "decode_response",
    "encode_error",
    "encode_request",
    "encode_response",
    "resolve_raw_input",
]

_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


@dataclass(slots=True)
class RequestInput:
    """One decoded input tensor.

    Attributes:
        name: the input's name (``""`` for the input of a raw binary request).
        datatype: its OIP datatype.
        shape: its shape, as sent.
        data: the tensor, already shaped, in the datatype's dtype; BYTES is an object array of
            ``bytes``. Binary inputs are read-only views of the body (possibly unaligned).
        parameters: the input's ``parameters`` (``binary_data_size`` included when it was binary).
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray[Any, Any]
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class RequestedOutput:
    """One entry of a request's ``outputs``.

    Attributes:
        name: the output asked for.
        binary: whether it goes back in binary: its ``binary_data`` parameter, else the request's
            ``binary_data_output``.
        parameters: the entry's ``parameters``.
    """

    name: str
    binary: bool
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    """A decoded inference request.

    Attributes:
        id: the request ``id``, to echo in the response; ``None`` when absent.
        inputs: the inputs, in request order.
        outputs: the outputs asked for, or ``None`` for all of them.
        parameters: the request's ``parameters`` (``priority``, ``timeout``, custom keys, ...).
        binary_output: the request's ``binary_data_output``: the default for outputs without their
            own ``binary_data`` (always ``True`` for a raw binary request).
        raw: set by the decoder for a raw binary request only; a JSON input that happens to be
            named ``""`` does not make a request raw.
    """

    id: str | None
    inputs: list[RequestInput]
    outputs: list[RequestedOutput] | None
    parameters: dict[str, Any] = field(default_factory=dict)
    binary_output: bool = False
    raw: bool = False

    @property
    def is_raw(self) -> bool:
        """Whether this is a raw binary request (see :func:`decode_request`)."""
        return self.raw

    def wants_binary(self, name: str) -> bool:
        """Whether output ``name`` goes back in binary (fit for ``encode_response(binary=...)``)."""
        if self.outputs is not None:
            for output in self.outputs:
                if output.name == name:
                    return output.binary
        return self.binary_output


@dataclass(slots=True)
class InferResponse:
    """A decoded inference response.

    Attributes:
        model_name: the model that answered (``""`` if the server left it out).
        model_version: its version, ``None`` when absent.
        id: the echoed request id, ``None`` when absent.
        outputs: output name -> tensor, in response order; binary outputs are read-only views of
            the body, BYTES are object arrays of ``bytes``.
        parameters: the response's ``parameters``.
    """

    model_name: str
    model_version: str | None
    id: str | None
    outputs: dict[str, np.ndarray[Any, Any]]
    parameters: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------- decoding


def _as_view(body: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(body)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _header_length(value: int | str | None, body_size: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.isdigit()):
            raise ProtocolError(
                f"Inference-Header-Content-Length must be a non-negative integer, got {value!r}"
            )
        value = int(text)
    if type(value) is not int or value < 0:
        raise ProtocolError(
            f"Inference-Header-Content-Length must be a non-negative integer, got {value!r}"
        )
    if value > body_size:
        raise ProtocolError(
            f"Inference-Header-Content-Length is {value} but the body has only {body_size} bytes"
        )
    return value


def _load_object(header: memoryview, what: str) -> dict[str, Any]:
    try:
        document = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        document = _load_nonstandard(header, exc, what)
    if type(document) is not dict:
        raise ProtocolError(f"{what} must be a JSON object, got {describe(document)}")
    return document


def _load_nonstandard(header: memoryview, exc: orjson.JSONDecodeError, what: str) -> Any:
    # Triton writes NaN and Infinity as bare tokens, which orjson refuses; the stdlib parser takes
    # them. Only tried when such a token is there, so garbage still fails fast.
    raw = bytes(header)
    if b"NaN" in raw or b"Infinity" in raw:
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            pass
    raise ProtocolError(f"{what} is not valid JSON: {exc}") from exc


def _flag(parameters: dict[str, Any], key: str, default: bool, where: str) -> bool:
    value = parameters.get(key, default)
    if type(value) is not bool:
        raise ProtocolError(f"{where}: parameter '{key}' must be a boolean, got {describe(value)}")
    return value


def _optional_str(document: dict[str, Any], key: str, what: str) -> str | None:
    value = document.get(key)
    if value is not None and type(value) is not str:
        raise ProtocolError(f"{what} '{key}' must be a string, got {describe(value)}")
    return value


def _tensor_list(document: dict[str, Any], key: str, what: str) -> list[Any]:
    value = document.get(key)
    if type(value) is not list:
        if value is None:
            raise ProtocolError(f"{what} has no '{key}' array")
        raise ProtocolError(f"{what} '{key}' must be an array, got {describe(value)}")
    return value


def _requested_outputs(value: object, binary_output: bool) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if type(value) is not list:
        raise ProtocolError(f"request 'outputs' must be an array, got {describe(value)}")
    outputs: list[RequestedOutput] = []
    names: set[str] = set()
    for index, spec in enumerate(value):
        if type(spec) is not dict:
            raise ProtocolError(f"outputs[{index}] must be an object, got {describe(spec)}")
        name = spec.get("name")
        if type(name) is not str:
            raise ProtocolError(f"outputs[{index}] needs a 'name' string, got {describe(name)}")
        where = f"output {name!r}"
        if name in names:
            raise ProtocolError(f"{where} is asked for more than once")
        names.add(name)
        parameters = parameters_of(spec.get("parameters"), where)
        binary = _flag(parameters, "binary_data", binary_output, where)
        outputs.append(RequestedOutput(name, binary, parameters))
    return outputs


def decode_request(
    body: bytes | bytearray | memoryview, header_length: int | str | None
) -> InferRequest:
    """Decode an inference request (server side).

    ``data`` may be nested or flat; only its element count must match the shape. Values must fit
    the datatype (booleans for BOOL, in-range integers for integer types, numbers for FP types,
    strings for BYTES, which become UTF-8 ``bytes``). Binary inputs (``binary_data_size``) are read
    from the bytes after the JSON header, in input order, as zero-copy views; every byte must belong
    to a tensor. Declared sizes are checked against the body before anything is allocated.

    **Raw binary request**: ``header_length == 0`` means the body is the raw bytes of the model's
    single input. The result then has one input named ``""``, datatype ``UINT8``, shape
    ``(len(body),)``, no outputs (all) and ``binary_output=True``; ``request.is_raw`` is true. The
    server, which knows the model, gives it a name, datatype and shape with
    :func:`resolve_raw_input`.

    Args:
        body: the whole HTTP body.
        header_length: the ``Inference-Header-Content-Length`` header, as an int or as the header's
            text; ``None`` when absent (the body is all JSON).

    Returns:
        The request.

    Raises:
        ProtocolError: the body is not a valid OIP request; the message names the problem and what
            was expected (fit for a 400 ``{"error": ...}`` answer).
    """
    view = _as_view(body)
    length = _header_length(header_length, len(view))
    if length == 0:
        raw = np.frombuffer(view, dtype=np.uint8)
        raw_input = RequestInput("", "UINT8", raw.shape, raw, {"binary_data_size": raw.size})
        return InferRequest(None, [raw_input], None, {}, True, raw=True)
    if length is None:
        header, binary = view, view[:0]
    else:
        header, binary = view[:length], view[length:]
    document = _load_object(header, "request")
    request_id = _optional_str(document, "id", "request")
    parameters = parameters_of(document.get("parameters"), "request")
    binary_output = _flag(parameters, "binary_data_output", False, "request")
    reader = TensorReader(binary, "input")
    inputs: list[RequestInput] = []
    for index, spec in enumerate(_tensor_list(document, "inputs", "request")):
        inputs.append(RequestInput(*reader.read(spec, index)))
    reader.finish()
    outputs = _requested_outputs(document.get("outputs"), binary_output)
    return InferRequest(request_id, inputs, outputs, parameters, binary_output)


def resolve_raw_input(
    raw: RequestInput, *, name: str, datatype: str, shape: Sequence[int]
) -> RequestInput:
    """Type the nameless input of a raw binary request with the model's only input.

    Triton's rules: at most one variable dim (``-1``), which the byte count fixes; BYTES needs one
    element (the whole body is that element, without a length prefix). Give ``shape`` with the
    batch dim already set to 1 where the model batches.

    Args:
        raw: ``request.inputs[0]`` of a request for which ``request.is_raw``.
        name: the model input's name.
        datatype: its OIP datatype.
        shape: its shape, ``-1`` for the variable dim.

    Returns:
        A new input: the body's bytes viewed as ``datatype`` (zero-copy), shaped.

    Raises:
        ProtocolError: the datatype is unknown, the shape has several variable dims, or the byte
            count does not fit the shape.
    """
    dtype = dtype_of(datatype)
    body: np.ndarray[Any, Any] = raw.data
    dims = [int(d) for d in shape]
    variable = [i for i, d in enumerate(dims) if d < 0]
    where = f"raw binary request for input {name!r}"
    if len(variable) > 1:
        raise ProtocolError(f"{where}: shape {dims} has more than one variable dim")
    if dtype.kind == "O":
        if any(d not in (1, -1) for d in dims):
            raise ProtocolError(f"{where}: a BYTES input must have shape [1], not {dims}")
        data = np.empty(1, dtype=object)
        data[0] = body.tobytes()
        resolved = tuple(1 for _ in dims)
        return RequestInput(name, datatype, resolved, data.reshape(resolved), dict(raw.parameters))
    unit = dtype.itemsize * math.prod(d for d in dims if d >= 0)
    if variable:
        if (unit == 0 and body.size) or (unit and body.size % unit):
            raise ProtocolError(f"{where}: {body.size} bytes are not a whole number of {dims}")
        dims[variable[0]] = body.size // unit if unit else 0
    elif body.size != unit:
        raise ProtocolError(f"{where}: {body.size} bytes, but shape {dims} needs {unit}")
    data = body.view(dtype)
    if datatype == "BOOL" and data.size and body.max() > 1:
        raise ProtocolError(f"{where}: BOOL tensor has bytes other than 0 and 1")
    return RequestInput(name, datatype, tuple(dims), data.reshape(dims), dict(raw.parameters))


def decode_response(
    body: bytes | bytearray | memoryview, header_length: int | str | None
) -> InferResponse:
    """Decode an inference response (client side); the checks are those of :func:`decode_request`.

    Args:
        body: the whole HTTP body of a 200 answer.
        header_length: the ``Inference-Header-Content-Length`` header (int or text), ``None`` when
            absent (the body is all JSON).

    Returns:
        The response.

    Raises:
        ProtocolError: the body is not a valid OIP response.
    """
    view = _as_view(body)
    length = _header_length(header_length, len(view))
    if length == 0:
        raise ProtocolError("Inference-Header-Content-Length 0 is only meaningful for requests")
    if length is None:
        header, binary = view, view[:0]
    else:
        header, binary = view[:length], view[length:]
    document = _load_object(header, "response")
    model_name = _optional_str(document, "model_name", "response") or ""
    model_version = _optional_str(document, "model_version", "response")
    response_id = _optional_str(document, "id", "response")
    parameters = parameters_of(document.get("parameters"), "response")
    reader = TensorReader(binary, "output")
    outputs: dict[str, np.ndarray[Any, Any]] = {}
    for index, spec in enumerate(_tensor_list(document, "outputs", "response")):
        name, _, _, data, _ = reader.read(spec, index)
        outputs[name] = data
    reader.finish()
    return InferResponse(model_name, model_version, response_id, outputs, parameters)


def decode_error(body: bytes | bytearray | memoryview) -> str:
    """The message of an error body: ``error`` of ``{"error": ...}``, else the body as text.

    Never raises: a non-OIP error page (a proxy's HTML, an empty body) is returned as text.
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = None
    if type(document) is dict and isinstance(document.get("error"), str):
        return str(document["error"])
    text = bytes(body).decode("utf-8", "replace").strip()
    return text or "empty error body"


# ------------------------------------------------------------------------------------- encoding


def _selector(binary: Callable[[str], bool] | Set[str] | bool) -> Callable[[str], bool]:
    if isinstance(binary, bool):
        return lambda _name: binary
    if isinstance(binary, Set):
        return binary.__contains__
    return binary


def _finish(
    header: dict[str, Any], buffers: list[Any], force_length: bool
) -> tuple[bytes, int | None]:
    try:
        head = orjson.dumps(header, option=_DUMPS_OPTIONS)
    except TypeError as exc:  # a parameter value JSON cannot carry
        raise ProtocolError(f"cannot encode the message as JSON: {exc}") from exc
    if not buffers and not force_length:
        return head, None
    return b"".join([head, *buffers]), len(head)


def encode_response(
    *,
    model_name: str,
    model_version: str | None,
    request_id: str | None,
    outputs: Sequence[tuple[str, np.ndarray[Any, Any]]],
    binary: Callable[[str], bool] | Set[str] | bool,
    parameters: Mapping[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """Encode an inference response (server side).

    JSON outputs carry flat ``data`` lists (as Triton does); FP16 goes as numbers, NaN and
    infinities as ``null`` (JSON has no spelling for them: ask for binary to keep them), BYTES as
    UTF-8 strings. Binary outputs carry ``parameters.binary_data_size`` and follow the JSON header
    in output order. The datatype comes from each array's dtype (``datatype_of``).

    Args:
        model_name: the model's name.
        model_version: its version, or ``None`` to leave it out.
        request_id: the request's ``id`` to echo, or ``None``.
        outputs: ``(name, array)`` pairs, in the order to send them.
        binary: which outputs go in binary: one bool for all, a set of names, or a predicate
            such as ``request.wants_binary``.
        parameters: response ``parameters``, if any.

    Returns:
        ``(body, header_length)``: the body as one ``bytes``, and the value for the
        ``Inference-Header-Content-Length`` header, ``None`` when no output is binary (then the
        body is plain JSON and the header must not be sent).

    Raises:
        ProtocolError: an output has a dtype OIP cannot carry, a BYTES element is not bytes or
            str, or a JSON BYTES output is not UTF-8.
    """
    pick = _selector(binary)
    buffers: list[Any] = []
    entries = [tensor_entry(name, array, pick(name), "output", buffers) for name, array in outputs]
    header: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        header["model_version"] = model_version
    if request_id is not None:
        header["id"] = request_id
    if parameters:
        header["parameters"] = dict(parameters)
    header["outputs"] = entries
    return _finish(header, buffers, force_length=False)


def encode_request(
    inputs: Mapping[str, np.ndarray[Any, Any]] | Sequence[tuple[str, np.ndarray[Any, Any]]],
    *,
    outputs: Sequence[str] | None = None,
    binary_inputs: bool = True,
    binary_outputs: bool = True,
    request_id: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """Encode an inference request (client side), as ``tritonclient.http`` does.

    With ``outputs=None`` all outputs are asked for, and ``binary_outputs`` becomes the request's
    ``binary_data_output``; otherwise each output carries ``binary_data``. ``parameters`` are added
    last and win over ``binary_data_output``. The datatype of each input comes from its dtype.

    Args:
        inputs: name -> array, or ``(name, array)`` pairs.
        outputs: output names to ask for; ``None`` (or empty) for all.
        binary_inputs: send inputs as binary (fast) rather than JSON lists.
        binary_outputs: ask for outputs in binary.
        request_id: the request ``id``, or ``None``.
        parameters: request ``parameters`` (``priority``, ``timeout``, custom keys).

    Returns:
        ``(body, header_length)``: ``header_length`` is the ``Inference-Header-Content-Length``
        value, ``None`` when no input is binary.

    Raises:
        ProtocolError: an input has a dtype OIP cannot carry, or a JSON BYTES input is not UTF-8.
    """
    pairs = inputs.items() if isinstance(inputs, Mapping) else inputs
    buffers: list[Any] = []
    entries = [tensor_entry(name, array, binary_inputs, "input", buffers) for name, array in pairs]
    header: dict[str, Any] = {}
    if request_id is not None:
        header["id"] = request_id
    header["inputs"] = entries
    request_parameters: dict[str, Any] = {}
    if outputs:  # like tritonclient, an empty list means all outputs
        header["outputs"] = [
            {"name": name, "parameters": {"binary_data": binary_outputs}} for name in outputs
        ]
    elif binary_outputs:
        request_parameters["binary_data_output"] = True
    if parameters:
        request_parameters.update(parameters)
    if request_parameters:
        header["parameters"] = request_parameters
    return _finish(header, buffers, force_length=binary_inputs and bool(entries))


def encode_error(message: str) -> bytes:
    """The OIP error body ``{"error": message}`` (for every non-200 answer)."""
    return orjson.dumps({"error": message})
