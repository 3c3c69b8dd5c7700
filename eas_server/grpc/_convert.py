"""KServe v2 gRPC tensors <-> the server's requests and answers; pure (protobuf <-> numpy, no I/O).

A ``ModelInferRequest`` becomes the ``eas_client.InferRequest`` that the HTTP codec makes, so that
``plan_request`` checks both protocols alike. Tensor data comes one of two ways, as in Triton:

- typed: ``inputs[i].contents``, one repeated field per datatype family (``int_contents`` carries
  INT8/16/32, ``uint_contents`` UINT8/16/32, ...); FP16 has no such field and must go raw;
- raw: ``raw_input_contents[i]`` holds input i's little-endian bytes, for every input or for none;
  a BYTES tensor is its elements in row-major order, each prefixed by its 4-byte little-endian
  length.

The answer goes raw when the request went raw (what Triton's clients send and read), and also when
an output has no typed field (FP16): ``raw_output_contents`` is for every output or for none.
Every size is checked against the data that came before anything is allocated. Errors are
``eas_client.ProtocolError``, whose text is fit for an INVALID_ARGUMENT answer.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from eas_client import (
    InferRequest,
    ProtocolError,
    RequestedOutput,
    RequestInput,
    datatype_of,
    dtype_of,
)

from ._proto import service_pb2

__all__ = ["TYPED_FIELDS", "decode_infer_request", "encode_infer_response", "parameters_of"]

TYPED_FIELDS: Mapping[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
"""OIP datatype -> the ``InferTensorContents`` field that carries it (FP16: none, raw only)."""

# the numpy dtype of each field's protobuf scalar type, to narrow from with a range check
_FIELD_DTYPES = {
    "bool_contents": np.dtype("?"),
    "int_contents": np.dtype("<i4"),
    "int64_contents": np.dtype("<i8"),
    "uint_contents": np.dtype("<u4"),
    "uint64_contents": np.dtype("<u8"),
    "fp32_contents": np.dtype("<f4"),
    "fp64_contents": np.dtype("<f8"),
}
_U32 = struct.Struct("<I")
_MAX_DIMS = 32
_MAX_NONZERO_PRODUCT = (2**63 - 1) // 8  # beyond this numpy cannot even describe the shape
_SHARED_MEMORY = "shared_memory_region"


def parameters_of(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """A ``map<string, InferParameter>`` as plain values (an unset parameter is None)."""
    out: dict[str, Any] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        out[key] = None if choice is None else getattr(parameter, choice)
    return out


def _shape(dims: Sequence[int], where: str) -> tuple[tuple[int, ...], int]:
    shape = tuple(int(d) for d in dims)
    if len(shape) > _MAX_DIMS:
        raise ProtocolError(
            f"{where}: shape has {len(shape)} dims; at most {_MAX_DIMS} are allowed"
        )
    if any(d < 0 for d in shape):
        raise ProtocolError(f"{where}: shape {list(shape)} has a negative dim")
    if math.prod(d for d in shape if d) > _MAX_NONZERO_PRODUCT:
        raise ProtocolError(f"{where}: shape {list(shape)} is too large")
    return shape, math.prod(shape)


def _split_bytes(raw: bytes, count: int, where: str) -> np.ndarray[Any, Any]:
    if count * _U32.size > len(raw):
        raise ProtocolError(
            f"{where}: {len(raw)} bytes of raw contents cannot hold {count} length-prefixed "
            "BYTES elements"
        )
    data = np.empty(count, dtype=object)
    view = memoryview(raw)
    offset = 0
    for index in range(count):
        if offset + _U32.size > len(raw):
            raise ProtocolError(f"{where}: raw contents end inside element {index}'s length")
        (length,) = _U32.unpack_from(view, offset)
        offset += _U32.size
        if offset + length > len(raw):
            raise ProtocolError(
                f"{where}: element {index} claims {length} bytes; only {len(raw) - offset} remain"
            )
        data[index] = bytes(view[offset : offset + length])
        offset += length
    if offset != len(raw):
        raise ProtocolError(f"{where}: {len(raw) - offset} bytes follow the {count} elements")
    return data


def _from_raw(raw: bytes, datatype: str, count: int, where: str) -> np.ndarray[Any, Any]:
    dtype = dtype_of(datatype)
    if dtype.kind == "O":
        return _split_bytes(raw, count, where)
    if len(raw) != count * dtype.itemsize:
        raise ProtocolError(
            f"{where}: {len(raw)} bytes of raw contents; {count} {datatype} elements need "
            f"{count * dtype.itemsize}"
        )
    data = np.frombuffer(raw, dtype=dtype)
    if datatype == "BOOL" and data.size and data.view(np.uint8).max() > 1:
        raise ProtocolError(f"{where}: BOOL tensor has bytes other than 0 and 1")
    return data


def _from_typed(tensor: Any, datatype: str, count: int, where: str) -> np.ndarray[Any, Any]:
    field = TYPED_FIELDS.get(datatype)
    if field is None:
        raise ProtocolError(f"{where}: {datatype} has no typed contents; send raw_input_contents")
    present = [f.name for f, _ in tensor.contents.ListFields()]
    if any(name != field for name in present):
        others = ", ".join(name for name in present if name != field)
        raise ProtocolError(f"{where}: a {datatype} tensor takes contents.{field}, not {others}")
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise ProtocolError(
            f"{where}: {len(values)} values in contents.{field}; shape "
            f"{list(tensor.shape)} needs {count}"
        )
    if datatype == "BYTES":
        data = np.empty(count, dtype=object)
        data[:] = list(values)
        return data
    wide = np.array(values, dtype=_FIELD_DTYPES[field])
    narrow = wide.astype(dtype_of(datatype))
    if narrow.dtype != wide.dtype and not np.array_equal(narrow.astype(wide.dtype), wide):
        raise ProtocolError(f"{where}: a value in contents.{field} is outside {datatype}'s range")
    return narrow


def _requested(outputs: Sequence[Any], raw: bool) -> list[RequestedOutput] | None:
    if not outputs:
        return None
    requested: list[RequestedOutput] = []
    for output in outputs:
        parameters = parameters_of(output.parameters)
        if _SHARED_MEMORY in parameters:
            raise ProtocolError(f"output {output.name!r}: shared memory is not supported")
        if any(r.name == output.name for r in requested):
            raise ProtocolError(f"output {output.name!r} is asked for more than once")
        requested.append(RequestedOutput(output.name, raw, parameters))
    return requested


def decode_infer_request(message: Any) -> InferRequest:
    """Turn a ``ModelInferRequest`` into the server's request (the one HTTP's codec makes).

    The result's ``binary_output`` says whether the request went raw, i.e. how to answer.
    ``model_name``/``model_version`` are the caller's to resolve.

    Raises:
        ProtocolError: unknown datatype; bad shape; contents that do not fit the shape or the
            datatype; raw contents for some inputs only; a name given twice; shared memory.
    """
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise ProtocolError(
            f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs; "
            "send one per input, in input order (or none, with typed contents)"
        )
    inputs: list[RequestInput] = []
    for index, tensor in enumerate(message.inputs):
        where = f"input {tensor.name!r}"
        if any(given.name == tensor.name for given in inputs):
            raise ProtocolError(f"{where} is given more than once")
        parameters = parameters_of(tensor.parameters)
        if _SHARED_MEMORY in parameters:
            raise ProtocolError(f"{where}: shared memory is not supported")
        try:
            dtype_of(tensor.datatype)
        except ProtocolError as exc:
            raise ProtocolError(f"{where}: {exc}") from None
        shape, count = _shape(tensor.shape, where)
        if raw:
            if tensor.contents.ListFields():
                raise ProtocolError(f"{where}: has contents and raw_input_contents; send one")
            data = _from_raw(raw[index], tensor.datatype, count, where)
        else:
            data = _from_typed(tensor, tensor.datatype, count, where)
        inputs.append(
            RequestInput(tensor.name, tensor.datatype, shape, data.reshape(shape), parameters)
        )
    outputs = _requested(message.outputs, bool(raw))
    parameters = parameters_of(message.parameters)
    return InferRequest(message.id or None, inputs, outputs, parameters, binary_output=bool(raw))


def _bytes_elements(array: np.ndarray[Any, Any], name: str) -> list[bytes]:
    elements: list[bytes] = []
    for element in array.ravel().tolist():
        if isinstance(element, str):
            element = element.encode("utf-8")
        elif not isinstance(element, bytes):
            raise ProtocolError(f"output {name!r}: BYTES element is {type(element).__name__}")
        elements.append(element)
    return elements


def encode_infer_response(
    *,
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Sequence[tuple[str, np.ndarray[Any, Any]]],
    raw: bool,
) -> Any:
    """Build the ``ModelInferResponse`` for ``outputs`` (in that order).

    Args:
        model_name, model_version: the model that answered.
        request_id: the request's ``id`` to echo, or None.
        outputs: ``(name, array)`` pairs; each datatype comes from the array's dtype.
        raw: answer in ``raw_output_contents`` (forced when an output is FP16).

    Raises:
        ProtocolError: an output's dtype has no OIP datatype, or a BYTES element is not bytes/str.
    """
    response = service_pb2.ModelInferResponse(
        model_name=model_name, model_version=model_version, id=request_id or ""
    )
    datatypes = [datatype_of(array) for _, array in outputs]
    raw = raw or any(datatype not in TYPED_FIELDS for datatype in datatypes)
    for (name, array), datatype in zip(outputs, datatypes, strict=True):
        tensor = response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if datatype == "BYTES":
            elements = _bytes_elements(array, name)
            if raw:
                parts = [part for e in elements for part in (_U32.pack(len(e)), e)]
                response.raw_output_contents.append(b"".join(parts))
            else:
                tensor.contents.bytes_contents.extend(elements)
        elif raw:
            response.raw_output_contents.append(
                array.astype(dtype_of(datatype), copy=False).tobytes()
            )
        else:
            getattr(tensor.contents, TYPED_FIELDS[datatype]).extend(array.ravel().tolist())
    return response
