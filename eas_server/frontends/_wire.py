"""Frames between the HTTP front ends and the executor: pure bytes <-> values, no I/O.

A frame is ``u32 length | u8 kind | u32 id | payload`` (little-endian; ``length`` counts kind, id
and payload). Tensors travel as their raw bytes (Triton's binary layout: fixed-size types as
they are in memory, BYTES as 4-byte-length-prefixed elements) behind a small JSON header naming
each tensor's datatype, shape and byte count; they are never pickled, and the receiver reads
fixed-size tensors as ``np.frombuffer`` views of the frame.

Frame kinds and their payloads:

=========  ========================  ====================================================
kind       direction                 payload
=========  ========================  ====================================================
HELLO      executor -> front end     JSON: the model, its documents, the token, limits
LISTENING  front end -> executor     JSON: the front end's pid
INFER      front end -> executor     tensors; header ``p`` priority, ``t`` timeout, ``o`` outputs
RESULT     executor -> front end     tensors; header ``q`` queue s, ``c`` compute s
ERROR      executor -> front end     JSON: ``e`` error class name, ``m`` message
CANCEL     front end -> executor     empty: the client went away
OBSERVE    front end -> executor     JSON: finished requests, for the instance's metrics
QUERY      front end -> executor     ``stats`` or ``metrics``
ANSWER     executor -> front end     the document asked for
STATE      executor -> front end     ``1`` ready, ``0`` not ready
STOP       executor -> front end     empty: stop accepting, finish what is in flight, exit
=========  ========================  ====================================================
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from enum import IntEnum
from typing import Any

import numpy as np
import orjson

from eas_client import datatype_of, dtype_of
from eas_client._tensors import array_from_binary, array_to_binary

__all__ = ["Buffer", "FrameReader", "Kind", "decode_tensors", "encode_tensors", "frame"]

HEADER = struct.Struct("<IBI")
_U32 = struct.Struct("<I")
Buffer = bytes | memoryview


class Kind(IntEnum):
    HELLO = 1
    LISTENING = 2
    INFER = 3
    RESULT = 4
    ERROR = 5
    CANCEL = 6
    OBSERVE = 7
    QUERY = 8
    ANSWER = 9
    STATE = 10
    STOP = 11


def frame(kind: Kind, rid: int, *payload: Buffer) -> list[Buffer]:
    """A frame as buffers for ``transport.writelines`` (the payload is not copied)."""
    size = sum(memoryview(p).nbytes for p in payload)
    return [HEADER.pack(size + 5, kind, rid), *payload]


def encode_tensors(meta: dict[str, Any], arrays: Mapping[str, np.ndarray]) -> list[Buffer]:
    """``u32 header length | JSON header | raw tensors``; ``meta`` gains the key ``_t``."""
    specs: list[list[Any]] = []
    buffers: list[Buffer] = []
    for name, array in arrays.items():
        datatype = datatype_of(array)
        raw = array_to_binary(array, datatype, f"output {name!r}")
        data = raw if isinstance(raw, bytes) else np.ascontiguousarray(raw).data
        specs.append([name, datatype, list(array.shape), memoryview(data).nbytes])
        buffers.append(data)
    head = orjson.dumps({**meta, "_t": specs})
    return [_U32.pack(len(head)), head, *buffers]


def decode_tensors(payload: memoryview) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The header and the tensors of an ``encode_tensors`` payload (fixed-size ones are views)."""
    (length,) = _U32.unpack_from(payload, 0)
    meta: dict[str, Any] = orjson.loads(payload[4 : 4 + length])
    arrays: dict[str, np.ndarray] = {}
    offset = 4 + length
    for name, datatype, shape, size in meta.pop("_t"):
        dims = tuple(shape)
        count = 1
        for d in dims:
            count *= d
        buf = payload[offset : offset + size]
        arrays[name] = array_from_binary(buf, datatype, dtype_of(datatype), dims, count, name)
        offset += size
    return meta, arrays


class FrameReader:
    """Cuts a byte stream into frames. Whole frames in a chunk that starts on a frame boundary
    are views of that chunk (no copy); only a frame split across reads is assembled."""

    def __init__(self) -> None:
        self._pending = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, memoryview]]:
        """Frames completed by ``data``: (kind, id, payload)."""
        if self._pending:
            self._pending += data
            data = bytes(self._pending)
            self._pending.clear()
        view = memoryview(data)
        frames: list[tuple[int, int, memoryview]] = []
        offset, end = 0, len(data)
        while end - offset >= HEADER.size:
            length, kind, rid = HEADER.unpack_from(view, offset)
            stop = offset + 4 + length
            if stop > end:
                break
            frames.append((kind, rid, view[offset + HEADER.size : stop]))
            offset = stop
        if offset < end:
            self._pending += view[offset:]
        return frames
