"""Property tests of the pure batch arithmetic: merging and splitting must be exact inverses."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from eas_server.batching import Padding, group_key, merge, rows_of, split_outputs, split_rows

_dtypes = st.sampled_from([np.float32, np.int64, np.float16, np.bool_, np.uint8])


@st.composite
def requests(draw: st.DrawFn) -> list[dict[str, np.ndarray]]:
    dtype = draw(_dtypes)
    tail = tuple(draw(st.lists(st.integers(0, 4), max_size=2)))
    sizes = draw(st.lists(st.integers(1, 9), min_size=1, max_size=8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return [
        {
            "a": rng.integers(0, 100, size=(n, *tail)).astype(dtype),
            "b": rng.standard_normal(size=(n, 3)).astype(np.float32),
        }
        for n in sizes
    ]


@given(requests())
@settings(max_examples=150, deadline=None)
def test_merge_then_split_gives_back_every_request(items: list[dict[str, np.ndarray]]) -> None:
    merged, lengths = merge(items)
    rows = [rows_of(it) for it in items]
    assert rows_of(merged) == sum(rows) and lengths == []
    assert len({group_key(it) for it in items}) == 1
    back = split_outputs(merged, rows)
    for original, got in zip(items, back, strict=True):
        for name in original:
            assert got[name].dtype == original[name].dtype
            np.testing.assert_array_equal(got[name], original[name])


@given(
    total=st.integers(1, 200),
    max_rows=st.integers(1, 64),
    width=st.integers(0, 3),
)
@settings(max_examples=150, deadline=None)
def test_split_rows_chunks_are_bounded_and_concatenate_back(
    total: int, max_rows: int, width: int
) -> None:
    x = np.arange(total * width, dtype=np.int64).reshape(total, width)
    chunks = split_rows({"x": x}, max_rows)
    assert all(0 < rows_of(c) <= max_rows for c in chunks)
    assert len(chunks) == -(-total // max_rows)
    np.testing.assert_array_equal(np.concatenate([c["x"] for c in chunks]), x)


@given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=6), hidden=st.integers(1, 4))
@settings(max_examples=100, deadline=None)
def test_padding_merges_lengths_and_cuts_outputs_back(lengths: list[int], hidden: int) -> None:
    padding = Padding(inputs={"ids": (1, 0), "mask": (1, 0)}, outputs={"hidden": 1})
    items = [
        {
            "ids": np.full((1, n), i + 1, dtype=np.int64),
            "mask": np.ones((1, n), dtype=np.int64),
        }
        for i, n in enumerate(lengths)
    ]
    assert len({group_key(it, padding) for it in items}) == 1
    merged, got_lengths = merge(items, padding)
    assert merged["ids"].shape == (len(items), max(lengths)) and got_lengths == lengths
    assert int(merged["mask"].sum()) == sum(lengths)  # padding is zeros, masked out
    hidden_out = np.repeat(merged["ids"][:, :, None], hidden, axis=2).astype(np.float32)
    pooled = merged["ids"].sum(axis=1, keepdims=True)
    back = split_outputs(
        {"hidden": hidden_out, "pooled": pooled}, [1] * len(items), got_lengths, padding
    )
    for i, (item, out) in enumerate(zip(items, back, strict=True)):
        assert out["hidden"].shape == (1, lengths[i], hidden)
        np.testing.assert_array_equal(out["hidden"][..., 0], item["ids"])
        assert out["pooled"].shape == (1, 1)


def test_different_non_batch_dims_are_different_groups() -> None:
    short = {"ids": np.zeros((1, 8), np.int64)}
    long = {"ids": np.zeros((1, 16), np.int64)}
    other_dtype = {"ids": np.zeros((1, 8), np.int32)}
    assert len({group_key(short), group_key(long), group_key(other_dtype)}) == 3
    assert group_key(short) == group_key({"ids": np.ones((5, 8), np.int64)})
