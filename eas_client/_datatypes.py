"""Open Inference Protocol datatypes and their numpy dtypes.

| OIP     | numpy (wire) | bytes per element                          |
|---------|--------------|--------------------------------------------|
| BOOL    | ``bool``     | 1 (0 or 1)                                 |
| UINT8-64| ``<u1-<u8``  | 1 / 2 / 4 / 8                              |
| INT8-64 | ``<i1-<i8``  | 1 / 2 / 4 / 8                              |
| FP16/32/64 | ``<f2-<f8`` | 2 / 4 / 8                                |
| BYTES   | ``object``   | variable: 4-byte LE uint32 length + bytes  |

Wire dtypes are little-endian (the binary tensor extension's byte order); on little-endian hosts
they are the native dtypes. ``BF16`` (Triton only) is not supported: numpy has no bfloat16 type.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from ._errors import ProtocolError

__all__ = ["DATATYPES", "datatype_of", "dtype_of", "element_size"]

DATATYPES: Mapping[str, np.dtype[Any]] = MappingProxyType(
    {
        "BOOL": np.dtype("?"),
        "UINT8": np.dtype("<u1"),
        "UINT16": np.dtype("<u2"),
        "UINT32": np.dtype("<u4"),
        "UINT64": np.dtype("<u8"),
        "INT8": np.dtype("<i1"),
        "INT16": np.dtype("<i2"),
        "INT32": np.dtype("<i4"),
        "INT64": np.dtype("<i8"),
        "FP16": np.dtype("<f2"),
        "FP32": np.dtype("<f4"),
        "FP64": np.dtype("<f8"),
        "BYTES": np.dtype(object),
    }
)
"""OIP datatype name -> the numpy dtype of its tensors (little-endian; ``object`` for BYTES)."""

# (dtype.kind, itemsize) -> OIP datatype, for every byte order.
_BY_KIND: dict[tuple[str, int], str] = {
    (dtype.kind, dtype.itemsize): name for name, dtype in DATATYPES.items() if name != "BYTES"
}
_BYTES_KINDS = frozenset("OSU")  # object, fixed bytes (np.bytes_), fixed str (np.str_)


def unknown_datatype_message(datatype: object) -> str:
    """The error text for a datatype outside the table (shared by the codec's messages)."""
    if datatype == "BF16":
        return "datatype 'BF16' is not supported (numpy has no bfloat16); send FP16 or FP32"
    return f"unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}"


def dtype_of(datatype: str) -> np.dtype[Any]:
    """The numpy dtype of an OIP datatype.

    Args:
        datatype: an OIP datatype name such as ``"FP32"`` or ``"BYTES"`` (case-sensitive, as on the
            wire).

    Returns:
        The little-endian numpy dtype (``object`` for ``BYTES``).

    Raises:
        ProtocolError: the name is not an OIP datatype (``BF16`` included).
    """
    try:
        return DATATYPES[datatype]
    except (KeyError, TypeError):
        raise ProtocolError(unknown_datatype_message(datatype)) from None


def datatype_of(array: np.ndarray[Any, Any] | np.dtype[Any]) -> str:
    """The OIP datatype for a numpy array (or dtype), whatever its byte order.

    ``object``, ``bytes_`` (``S``) and ``str_`` (``U``) arrays are ``BYTES``; ``str`` elements are
    sent as UTF-8.

    Args:
        array: the array, or its dtype.

    Returns:
        The OIP datatype name.

    Raises:
        ProtocolError: the dtype has no OIP datatype (complex, datetime, void, float128, ...).
    """
    dtype = array if isinstance(array, np.dtype) else array.dtype
    kind = dtype.kind
    if kind in _BYTES_KINDS:
        return "BYTES"
    name = _BY_KIND.get((kind, dtype.itemsize))
    if name is None:
        raise ProtocolError(
            f"numpy dtype {dtype} has no OIP datatype; expected bool, int8-64, uint8-64, "
            "float16/32/64, or bytes/str/object for BYTES"
        )
    return name


def element_size(datatype: str) -> int | None:
    """Bytes per element on the wire: ``None`` for ``BYTES`` (variable length).

    Raises:
        ProtocolError: the name is not an OIP datatype.
    """
    dtype = dtype_of(datatype)
    return None if dtype.kind == "O" else dtype.itemsize
