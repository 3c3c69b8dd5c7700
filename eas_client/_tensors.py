"""One tensor of the Open Inference Protocol: JSON ``data`` or binary bytes <-> a numpy array.

Private to ``_codec``. Every function takes ``where`` (``"input 'x'"``) to start its error messages.
Numeric data never goes through a per-element Python loop: JSON lists are type-checked with
``set(map(type, ...))`` and converted by numpy, and serialized by orjson's numpy support; binary
tensors are ``np.frombuffer`` views. BYTES elements are Python objects, handled one by one.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from ._datatypes import DATATYPES, datatype_of, unknown_datatype_message
from ._errors import ProtocolError

__all__ = ["Tensor", "TensorReader", "describe", "parameters_of", "tensor_entry"]

_U32 = struct.Struct("<I")
_MAX_DIMS = 32  # numpy 1.x's limit (2.x allows 64); no model has more
# numpy refuses shapes whose nonzero dims multiply past this (size * itemsize must fit intp).
_MAX_NONZERO_PRODUCT = (2**63 - 1) // 8


def describe(value: object) -> str:
    """The JSON kind of a decoded value, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _shape_text(shape: Any) -> str:
    text = str(list(shape))
    return text if len(text) <= 80 else text[:77] + "..."


def parse_shape(value: object, where: str) -> tuple[tuple[int, ...], int]:
    """Validate a JSON ``shape``; return it as a tuple and its element count.

    Raises:
        ProtocolError: not an array of non-negative integers, too many dims, or so large that numpy
            could not even describe it (checked before anything is allocated).
    """
    if type(value) is not list:
        raise ProtocolError(
            f"{where}: 'shape' must be an array of non-negative integers, got {describe(value)}"
        )
    if len(value) > _MAX_DIMS:
        raise ProtocolError(
            f"{where}: shape has {len(value)} dims; at most {_MAX_DIMS} are supported"
        )
    count = 1
    nonzero = 1
    for dim in value:
        if type(dim) is not int or dim < 0:
            raise ProtocolError(
                f"{where}: shape {_shape_text(value)} has {dim!r}; "
                "dims must be non-negative integers"
            )
        count *= dim
        if dim:
            nonzero *= dim
    if nonzero > _MAX_NONZERO_PRODUCT:
        raise ProtocolError(f"{where}: shape {_shape_text(value)} is too large")
    return tuple(value), count


def _count_error(where: str, shape: tuple[int, ...], count: int, found: int) -> ProtocolError:
    return ProtocolError(
        f"{where}: shape {_shape_text(shape)} has {count} elements but 'data' has {found}"
    )


# ---------------------------------------------------------------------------------------- binary


def check_binary_size(
    size: object,
    datatype: str,
    dtype: np.dtype[Any],
    shape: tuple[int, ...],
    count: int,
    where: str,
) -> int:
    """Validate ``binary_data_size`` against the shape, before any byte is read.

    Raises:
        ProtocolError: not a non-negative integer; for fixed-size types, not ``count * itemsize``;
            for BYTES, smaller than the 4-byte length prefixes of ``count`` elements.
    """
    if type(size) is not int or size < 0:
        raise ProtocolError(
            f"{where}: binary_data_size must be a non-negative integer, got {describe(size)}"
        )
    if dtype.kind == "O":
        if size < 4 * count:
            raise ProtocolError(
                f"{where}: binary_data_size is {size} but {count} BYTES elements need at least "
                f"{4 * count} bytes of length prefixes"
            )
    elif size != count * dtype.itemsize:
        raise ProtocolError(
            f"{where}: binary_data_size is {size} but shape {_shape_text(shape)} of {datatype} "
            f"needs {count * dtype.itemsize} bytes"
        )
    return size


def array_from_binary(
    buf: memoryview,
    datatype: str,
    dtype: np.dtype[Any],
    shape: tuple[int, ...],
    count: int,
    where: str,
) -> np.ndarray[Any, Any]:
    """A tensor from its binary bytes (already sized by :func:`check_binary_size`).

    Fixed-size types are zero-copy ``np.frombuffer`` views (read-only when the body is ``bytes``,
    and possibly unaligned); BYTES gives an object array of ``bytes``.

    Raises:
        ProtocolError: a BYTES length prefix runs past the tensor, bytes are left over after the
            last BYTES element, or a BOOL byte is neither 0 nor 1.
    """
    if dtype.kind == "O":
        return _bytes_from_binary(buf, count, where).reshape(shape)
    array = np.frombuffer(buf, dtype=dtype)
    if datatype == "BOOL" and count and array.view(np.uint8).max() > 1:
        raise ProtocolError(f"{where}: BOOL tensor has bytes other than 0 and 1")
    return array.reshape(shape)


def _bytes_from_binary(buf: memoryview, count: int, where: str) -> np.ndarray[Any, Any]:
    end = len(buf)
    unpack = _U32.unpack_from
    items: list[bytes] = []
    offset = 0
    for index in range(count):
        if offset + 4 > end:
            raise ProtocolError(
                f"{where}: BYTES element {index} has no room for its 4-byte length "
                f"({end - offset} bytes left in the tensor)"
            )
        (length,) = unpack(buf, offset)
        offset += 4
        stop = offset + length
        if stop > end:
            raise ProtocolError(
                f"{where}: BYTES element {index} declares {length} bytes but only "
                f"{end - offset} are left in the tensor"
            )
        items.append(bytes(buf[offset:stop]))
        offset = stop
    if offset != end:
        raise ProtocolError(
            f"{where}: {end - offset} bytes left over after the last of {count} BYTES elements"
        )
    return _object_array(items)


def _object_array(items: list[Any]) -> np.ndarray[Any, Any]:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def array_to_binary(
    array: np.ndarray[Any, Any], datatype: str, where: str
) -> bytes | np.ndarray[Any, Any]:
    """The tensor's binary bytes: ``bytes`` for BYTES, else a uint8 view (a copy only when the array
    is not C-contiguous little-endian). Both go straight into ``bytes.join``.

    Raises:
        ProtocolError: a BYTES element is not bytes/str, or is longer than 4 GiB.
    """
    if datatype == "BYTES":
        pack = _U32.pack
        parts: list[bytes] = []
        for item in _bytes_items(array, where):
            if len(item) > 0xFFFFFFFF:
                raise ProtocolError(f"{where}: a BYTES element is longer than 2**32 - 1 bytes")
            parts.append(pack(len(item)))
            parts.append(item)
        return b"".join(parts)
    wire = np.ascontiguousarray(array, dtype=DATATYPES[datatype])
    return wire.reshape(-1).view(np.uint8)


def _bytes_items(array: np.ndarray[Any, Any], where: str) -> list[bytes]:
    kind = array.dtype.kind
    flat = array.reshape(-1).tolist()
    if kind == "S":
        return flat
    try:
        if kind == "U":
            return [text.encode() for text in flat]
        return [_as_bytes(item, where) for item in flat]
    except UnicodeEncodeError:
        raise ProtocolError(f"{where}: a BYTES string cannot be encoded as UTF-8") from None


def _as_bytes(item: object, where: str) -> bytes:
    if type(item) is bytes:
        return item
    if isinstance(item, str):
        return item.encode()
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item)
    raise ProtocolError(
        f"{where}: BYTES element of type {type(item).__name__}; expected bytes or str"
    )


# ------------------------------------------------------------------------------------------ JSON


def array_to_json(array: np.ndarray[Any, Any], datatype: str, where: str) -> Any:
    """The tensor's flat JSON ``data``: a native-endian contiguous 1-D array for orjson's
    ``OPT_SERIALIZE_NUMPY`` (NaN and infinities become ``null``), or a list of ``str`` for BYTES.

    Raises:
        ProtocolError: a BYTES element is not UTF-8 text (binary output is needed for it).
    """
    if datatype == "BYTES":
        if array.dtype.kind == "U":
            return array.reshape(-1).tolist()
        try:
            return [
                item.decode() if isinstance(item, bytes | bytearray) else _as_text(item, where)
                for item in array.reshape(-1).tolist()
            ]
        except UnicodeDecodeError:
            raise ProtocolError(
                f"{where}: a BYTES element is not valid UTF-8, which JSON cannot carry; "
                "ask for this tensor in binary (binary_data)"
            ) from None
    flat = array.reshape(-1)
    if not flat.dtype.isnative:
        flat = flat.astype(flat.dtype.newbyteorder("="))
    elif not flat.flags.c_contiguous:  # a 1-D view with strides (reshape keeps some views)
        flat = np.ascontiguousarray(flat)
    return flat


def _as_text(item: object, where: str) -> str:
    if isinstance(item, str):
        return item
    raise ProtocolError(
        f"{where}: BYTES element of type {type(item).__name__}; expected bytes or str"
    )


_NoneType = type(None)
# The Python types orjson gives that each kind of datatype accepts. bool is not an int here.
_ALLOWED: dict[str, frozenset[type]] = {
    "b": frozenset({bool}),
    "i": frozenset({int}),
    "u": frozenset({int}),
    "f": frozenset({int, float, _NoneType}),  # null: NaN, as non-finite values are encoded
    "O": frozenset({str}),
}
_EXPECTED = {
    "b": "JSON booleans",
    "i": "JSON integers",
    "u": "JSON integers",
    "f": "JSON numbers",
    "O": "JSON strings",
}


def array_from_json(
    data: object,
    datatype: str,
    dtype: np.dtype[Any],
    shape: tuple[int, ...],
    count: int,
    where: str,
) -> np.ndarray[Any, Any]:
    """A tensor from its JSON ``data``, flat or regularly nested (only the element count must
    match the shape).

    The values must be of the datatype's kind: booleans for BOOL, integers in range for INT*/UINT*,
    integers or numbers for FP* (``null`` reads as NaN, the encoder's spelling of non-finite
    values), strings for BYTES (encoded as UTF-8). The kinds are checked before numpy sees the
    values: numpy's own inference would turn a stray long string into a ``count * len`` allocation.

    Raises:
        ProtocolError: not an array, ragged nesting, wrong element count, values of the wrong kind
            or out of range for the datatype.
    """
    if type(data) is not list:
        raise ProtocolError(f"{where}: 'data' must be an array, got {describe(data)}")
    kind = dtype.kind
    values, kinds = _flat_values(data, kind, where)
    if len(values) != count:
        raise _count_error(where, shape, count, len(values))
    if count == 0:
        return np.empty(shape, dtype=dtype)
    allowed = _ALLOWED[kind]
    if not kinds <= allowed:
        bad = next(v for v in values if type(v) not in allowed)
        raise ProtocolError(
            f"{where}: {datatype} data must be {_EXPECTED[kind]}, got {describe(bad)}"
        )
    if kind == "O":
        try:
            return _object_array([text.encode() for text in values]).reshape(shape)
        except UnicodeEncodeError:
            raise ProtocolError(f"{where}: a BYTES string is not valid Unicode") from None
    if kind == "b":
        return np.array(values, dtype=bool).reshape(shape)
    if _NoneType in kinds:
        values = [math.nan if v is None else v for v in values]
    return _convert(values, datatype, dtype, where).reshape(shape)


def _flat_values(data: list[Any], kind: str, where: str) -> tuple[list[Any], set[type]]:
    kinds = set(map(type, data))
    if list not in kinds:
        return data, kinds
    try:  # regular nesting -> an N-d object array of the scalars (nothing copied)
        values = np.array(data, dtype=object).reshape(-1).tolist()
    except ValueError:
        values = [data]  # numpy refused the nesting; reported as ragged below
    kinds = set(map(type, values))
    if list in kinds:
        raise ProtocolError(
            f"{where}: 'data' must be a flat or regularly nested array of {_EXPECTED[kind]} "
            "(it is ragged or nested too deep)"
        )
    return values, kinds


def _convert(
    values: list[Any], datatype: str, dtype: np.dtype[Any], where: str
) -> np.ndarray[Any, Any]:
    # ``values`` holds only ints, or ints and floats for FP. numpy infers int64 or uint64; float64
    # when int64 and uint64 values meet (past 2**63), where exactness needs Python's ints; object
    # for ints past 64 bits (only from the stdlib fallback parser).
    array = np.array(values)
    if array.dtype.kind == "O":
        raise ProtocolError(f"{where}: a value is out of range for {datatype}")
    if dtype.kind in "iu":
        if array.dtype == dtype:
            return array
        exact = array.dtype.kind in "iu"
        low, high = (int(array.min()), int(array.max())) if exact else (min(values), max(values))
        info = np.iinfo(dtype)
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise ProtocolError(
                f"{where}: value {bad} is out of range for {datatype} [{info.min}, {info.max}]"
            )
        return array.astype(dtype) if exact else np.array(values, dtype=dtype)
    if array.dtype == dtype:
        return array
    with np.errstate(over="ignore"):
        out = array.astype(dtype)
    if dtype.itemsize < 8 and np.isinf(out).any():
        before = np.count_nonzero(np.isinf(array)) if array.dtype.kind == "f" else 0
        if np.count_nonzero(np.isinf(out)) != before:
            raise ProtocolError(
                f"{where}: a value is out of range for {datatype} "
                f"(largest finite value {float(np.finfo(dtype).max)})"
            )
    return out


# --------------------------------------------------------------------------------- messages


def parameters_of(value: object, where: str) -> dict[str, Any]:
    """A message's or tensor's ``parameters``: ``{}`` when absent, else it must be an object."""
    if value is None:
        return {}
    if type(value) is not dict:
        raise ProtocolError(f"{where}: 'parameters' must be an object, got {describe(value)}")
    return value


# A decoded tensor: name, datatype, shape, data, parameters (a tuple: this is the hot path).
Tensor = tuple[str, str, tuple[int, ...], np.ndarray[Any, Any], dict[str, Any]]


class TensorReader:
    """Decodes a message's tensors in order, consuming the binary section as it goes."""

    __slots__ = ("binary", "names", "offset", "what")

    def __init__(self, binary: memoryview, what: str):
        self.binary = binary
        self.what = what  # "input" or "output"
        self.offset = 0
        self.names: set[str] = set()

    def read(self, spec: object, index: int) -> Tensor:
        """Decode the tensor ``spec`` (``index`` in its list), taking its binary bytes if any."""
        if type(spec) is not dict:
            raise ProtocolError(f"{self.what}s[{index}] must be an object, got {describe(spec)}")
        name = spec.get("name")
        if type(name) is not str:
            raise ProtocolError(
                f"{self.what}s[{index}] needs a 'name' string, got {describe(name)}"
            )
        where = f"{self.what} {name!r}"
        if name in self.names:
            raise ProtocolError(f"{where} appears more than once")
        self.names.add(name)
        datatype = spec.get("datatype")
        if type(datatype) is not str or datatype not in DATATYPES:
            if datatype is None:
                raise ProtocolError(f"{where} needs a 'datatype' string")
            raise ProtocolError(f"{where}: {unknown_datatype_message(datatype)}")
        dtype = DATATYPES[datatype]
        if "shape" not in spec:
            raise ProtocolError(f"{where} needs a 'shape' array")
        shape, count = parse_shape(spec["shape"], where)
        parameters = parameters_of(spec.get("parameters"), where)
        size = parameters.get("binary_data_size")
        if size is not None:
            if "data" in spec:
                raise ProtocolError(f"{where} has both 'data' and binary_data_size; send one")
            size = check_binary_size(size, datatype, dtype, shape, count, where)
            start, left = self.offset, len(self.binary) - self.offset
            if size > left:
                raise ProtocolError(
                    f"{where}: binary_data_size is {size} but only {left} bytes of binary data "
                    "are left after the JSON header (is Inference-Header-Content-Length right?)"
                )
            self.offset += size
            buf = self.binary[start : start + size]
            data = array_from_binary(buf, datatype, dtype, shape, count, where)
        elif "data" in spec:
            data = array_from_json(spec["data"], datatype, dtype, shape, count, where)
        elif "shared_memory_region" in parameters:
            raise ProtocolError(f"{where}: shared memory is not supported; send the data")
        else:
            raise ProtocolError(f"{where} has neither 'data' nor parameters.binary_data_size")
        return name, datatype, shape, data, parameters

    def finish(self) -> None:
        """Check that the tensors used the whole binary section."""
        left = len(self.binary) - self.offset
        if left:
            raise ProtocolError(
                f"{left} bytes after the JSON header belong to no tensor (the binary_data_size "
                "values do not add up to the body)"
            )


def tensor_entry(
    name: str, array: np.ndarray[Any, Any], binary: bool, what: str, buffers: list[Any]
) -> dict[str, Any]:
    """The JSON entry of a tensor to send; its binary bytes, if any, are appended to ``buffers``."""
    where = f"{what} {name!r}"
    if not isinstance(array, np.ndarray):
        raise ProtocolError(f"{where} must be a numpy array, got {type(array).__name__}")
    try:
        datatype = datatype_of(array)
    except ProtocolError as exc:
        raise ProtocolError(f"{where}: {exc}") from None
    entry: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": datatype}
    if binary:
        raw = array_to_binary(array, datatype, where)
        entry["parameters"] = {"binary_data_size": len(raw)}
        buffers.append(raw)
    else:
        entry["data"] = array_to_json(array, datatype, where)
    return entry
