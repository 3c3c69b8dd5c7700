"""The front end <-> executor frames: tensors round-trip as raw bytes, frames survive any cut."""

from __future__ import annotations

import numpy as np
from hypothesis import given, strategies as st

from eas_server.frontends._wire import FrameReader, Kind, decode_tensors, encode_tensors, frame


def _join(buffers: list[bytes | memoryview]) -> bytes:
    return b"".join(bytes(b) for b in buffers)


def test_tensors_round_trip_with_their_header() -> None:
    arrays: dict[str, np.ndarray] = {
        "ids": np.arange(12, dtype=np.int64).reshape(3, 4),
        "half": np.linspace(0, 1, 6, dtype=np.float16).reshape(3, 2),
        "flag": np.array([[True], [False], [True]]),
        "text": np.array([[b"turn on"], [b""], ["l\u00e4mp".encode()]], dtype=object),
        "empty": np.zeros((0, 5), dtype=np.float32),
        "strided": np.arange(20, dtype=np.float32).reshape(4, 5)[:, ::2],
    }
    payload = _join(encode_tensors({"p": 1, "t": 0.5, "o": None}, arrays))
    meta, got = decode_tensors(memoryview(payload))
    assert meta == {"p": 1, "t": 0.5, "o": None}  # "t" (timeout) is not taken for tensors
    assert list(got) == list(arrays)
    for name, array in arrays.items():
        assert got[name].shape == array.shape and got[name].dtype == array.dtype, name
        assert (got[name] == array).all(), name


def test_fixed_size_tensors_are_views_of_the_frame() -> None:
    payload = _join(encode_tensors({}, {"x": np.ones((2, 3), dtype=np.float32)}))
    _, got = decode_tensors(memoryview(payload))
    assert got["x"].base is not None and not got["x"].flags.owndata


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=8), st.data())
def test_frames_survive_any_cut_of_the_stream(sizes: list[int], data: st.DataObject) -> None:
    frames = [
        (Kind.INFER if i % 2 else Kind.RESULT, i, bytes(range(n % 256)) * (n // 7 + 1))
        for i, n in enumerate(sizes)
    ]
    stream = b"".join(_join(frame(kind, rid, body)) for kind, rid, body in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    reader = FrameReader()
    got = []
    for start, stop in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += [(k, r, bytes(p)) for k, r, p in reader.feed(stream[start:stop])]
    assert got == frames
