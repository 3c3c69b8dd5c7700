"""Request bodies of the Open Inference Protocol, prepared once and sent as they are by wrk or
h2load.

Two HTTP formats (`FORMATS`): `json` (tensors as JSON lists) and `binary` (Triton's binary
tensor extension: the JSON header, then each input's raw little-endian bytes in header order;
the header's length goes in `Inference-Header-Content-Length`). Both ask for the outputs named
in `outputs` only, binary ones in binary form. And `grpc` (`encode_grpc`): KServe v2's
`ModelInferRequest` protobuf with the inputs in `raw_input_contents`, framed as one gRPC message
(a 0 compressed-flag byte, the 4-byte big-endian length, the message), the body of an HTTP/2
POST to `GRPC_PATH`.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

FORMATS = ("json", "binary")
HEADER = "Inference-Header-Content-Length"
GRPC_PATH = "/inference.GRPCInferenceService/ModelInfer"
GRPC_HEADERS = {"content-type": "application/grpc", "te": "trailers"}
OIP_DTYPES: dict[str, str] = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "int8": "INT8",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
}
NUMPY_DTYPES = {oip: np.dtype(name) for name, oip in OIP_DTYPES.items()}

Tensors = Mapping[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class Body:
    """One prepared request: the bytes to POST and the headers that go with them."""

    data: bytes
    headers: dict[str, str]


def _tensor_header(name: str, array: npt.NDArray[Any]) -> dict[str, Any]:
    return {"name": name, "shape": list(array.shape), "datatype": OIP_DTYPES[array.dtype.name]}


def encode(inputs: Tensors, outputs: Sequence[str], fmt: str) -> Body:
    """An OIP inference request body for `inputs`, asking for `outputs`, in format `fmt`."""
    if fmt == "json":
        tensors = [
            {**_tensor_header(name, a), "data": a.reshape(-1).tolist()}
            for name, a in inputs.items()
        ]
        request = {"inputs": tensors, "outputs": [{"name": n} for n in outputs]}
        return Body(json.dumps(request).encode(), {"Content-Type": "application/json"})
    if fmt != "binary":
        raise ValueError(f"unknown body format {fmt!r}; expected one of {FORMATS}")
    raws = [_raw(a) for a in inputs.values()]
    tensors = [
        {**_tensor_header(name, a), "parameters": {"binary_data_size": len(raw)}}
        for (name, a), raw in zip(inputs.items(), raws, strict=True)
    ]
    wanted = [{"name": n, "parameters": {"binary_data": True}} for n in outputs]
    header = json.dumps({"inputs": tensors, "outputs": wanted}).encode()
    headers = {"Content-Type": "application/octet-stream", HEADER: str(len(header))}
    return Body(header + b"".join(raws), headers)


def _raw(array: npt.NDArray[Any]) -> bytes:
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def encode_grpc(model: str, inputs: Tensors, outputs: Sequence[str]) -> Body:
    """A gRPC `ModelInfer` request for `model` (framed, as POSTed), asking for `outputs`."""
    from tritonclient.grpc import service_pb2  # the `server` extra's tritonclient[grpc]

    request = service_pb2.ModelInferRequest(model_name=model)
    for name, array in inputs.items():
        tensor = request.inputs.add()
        tensor.name = name
        tensor.datatype = OIP_DTYPES[array.dtype.name]
        tensor.shape.extend(array.shape)
        request.raw_input_contents.append(_raw(array))
    for name in outputs:
        request.outputs.add().name = name
    message: bytes = request.SerializeToString()
    return Body(b"\0" + struct.pack(">I", len(message)) + message, dict(GRPC_HEADERS))


def decode(data: bytes, headers: Mapping[str, str]) -> dict[str, npt.NDArray[Any]]:
    """The outputs of an OIP inference response, JSON or binary, as numpy arrays."""
    lowered = {k.lower(): v for k, v in headers.items()}
    length = lowered.get(HEADER.lower())
    split = int(length) if length is not None else len(data)
    response = json.loads(data[:split])
    offset = split
    result: dict[str, npt.NDArray[Any]] = {}
    for out in response["outputs"]:
        dtype = NUMPY_DTYPES[out["datatype"]]
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            array = np.frombuffer(data[offset : offset + size], dtype=dtype.newbyteorder("<"))
            offset += size
        else:
            array = np.asarray(out["data"], dtype=dtype)
        result[out["name"]] = array.reshape(out["shape"])
    return result


def rows(sample: Tensors, count: int) -> list[dict[str, npt.NDArray[Any]]]:
    """`count` single-example requests (batch dim 1) cycling over the rows of `sample`."""
    n = len(next(iter(sample.values())))
    return [{k: v[i % n : i % n + 1] for k, v in sample.items()} for i in range(count)]


def write(bodies: Sequence[Body], directory: Path, stem: str) -> list[Path]:
    """Save each body to `directory/stem-<i>.bin` (wrk reads them); returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, body in enumerate(bodies):
        path = directory / f"{stem}-{i:03d}.bin"
        path.write_bytes(body.data)
        paths.append(path)
    return paths
