"""The stored form of a revision (pure), property-tested."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from config_store import MAX_CONTENT_BYTES, ContentTooLarge
from config_store._envelope import check_content, content_md5, decode, encode


@given(
    revision=st.integers(1, 2**53),
    modified=st.floats(0, 4e9, allow_nan=False),
    content=st.binary(max_size=4096),
)
@settings(max_examples=200, deadline=None)
def test_round_trip(revision: int, modified: float, content: bytes) -> None:
    env = decode(encode(revision, content_md5(content), modified, content))
    assert (env.revision, env.modified, env.content, env.ref) == (
        revision,
        modified,
        content,
        False,
    )


@given(content=st.binary(min_size=1, max_size=512), flip=st.integers(0, 511))
@settings(max_examples=100, deadline=None)
def test_any_corruption_of_the_content_is_detected(content: bytes, flip: int) -> None:
    data = bytearray(encode(3, content_md5(content), 1.0, content))
    data[len(data) - len(content) + flip % len(content)] ^= 0x01
    with pytest.raises(ValueError, match="md5"):
        decode(bytes(data))


def test_reference_envelopes_carry_no_content() -> None:
    env = decode(encode(7, content_md5(b"big"), 1.0, b"big", ref=True))
    assert env.ref and env.content == b"" and env.revision == 7


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{}",
        b"AUTOAI-CFG 1\n",
        b"AUTOAI-CFG 1\nnot json\n",
        b'AUTOAI-CFG 1\n{"revision": 1}\n',
    ],
)
def test_garbage_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode(data)


def test_check_content() -> None:
    assert check_content("é") == "é".encode()
    assert check_content(memoryview(b"ab")) == b"ab"
    assert len(check_content(b"x" * MAX_CONTENT_BYTES)) == MAX_CONTENT_BYTES
    with pytest.raises(ContentTooLarge):
        check_content(b"x" * (MAX_CONTENT_BYTES + 1))
    with pytest.raises(TypeError):
        check_content(1.5)
