"""The OIP datatype table: names, dtypes, sizes, and agreement with tritonclient's own table."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.utils as triton_utils

from eas_client import DATATYPES, ProtocolError, datatype_of, dtype_of, element_size

ALL = [
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]


def test_table_has_exactly_the_oip_datatypes():
    assert list(DATATYPES) == ALL
    with pytest.raises(TypeError):
        DATATYPES["BF16"] = np.dtype("<u2")  # type: ignore[index]


@pytest.mark.parametrize("datatype", ALL)
def test_agrees_with_tritonclient(datatype):
    assert dtype_of(datatype) == np.dtype(triton_utils.triton_to_np_dtype(datatype))
    assert datatype_of(dtype_of(datatype)) == datatype
    assert triton_utils.np_to_triton_dtype(dtype_of(datatype)) == datatype


@pytest.mark.parametrize("datatype", [d for d in ALL if d not in ("BOOL", "BYTES")])
def test_wire_dtypes_are_little_endian_and_any_byte_order_maps_back(datatype):
    dtype = dtype_of(datatype)
    assert dtype.byteorder in ("<", "=", "|")
    assert dtype.newbyteorder("<").str == dtype.str
    assert datatype_of(np.zeros(2, dtype=dtype.newbyteorder(">"))) == datatype
    assert element_size(datatype) == dtype.itemsize


@pytest.mark.parametrize(
    "array",
    [
        np.array([b"a", b"bc"], dtype=object),
        np.array([b"a", b"bc"]),  # S2
        np.array(["a", "bc"]),  # U2
    ],
    ids=["object", "bytes_", "str_"],
)
def test_bytes_like_arrays_are_bytes(array):
    assert datatype_of(array) == "BYTES"
    assert element_size("BYTES") is None
    assert dtype_of("BYTES") == np.dtype(object)


@pytest.mark.parametrize(
    "dtype", ["complex64", "complex128", "datetime64[s]", "timedelta64[s]", "V4", "longdouble"]
)
def test_dtypes_without_datatype_are_refused(dtype):
    if np.dtype(dtype) == np.float64:  # longdouble is float64 on some platforms
        pytest.skip("longdouble is float64 here")
    with pytest.raises(ProtocolError, match="has no OIP datatype"):
        datatype_of(np.zeros(1, dtype=dtype))


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("FP8", "unknown datatype 'FP8'; expected one of BOOL"),
        ("fp32", "unknown datatype 'fp32'"),
        ("BF16", "BF16.*not supported"),
        ("", "unknown datatype ''"),
    ],
)
def test_unknown_datatypes_are_protocol_errors(name, match):
    with pytest.raises(ProtocolError, match=match):
        dtype_of(name)
    with pytest.raises(ProtocolError, match=match):
        element_size(name)
    with pytest.raises(ValueError):  # ProtocolError is a ValueError
        dtype_of(name)
