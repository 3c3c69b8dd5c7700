"""Test data: loaded from the user (npz file or dict) and checked against the signature, or drawn
from the signature with sensible ranges when none is given."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ._errors import InvalidTestData
from ._model import ModelInfo

__all__ = ["TestData", "load_test_data", "synthesize"]

TestData = dict[str, np.ndarray]


def load_test_data(source: str | Path | Mapping[str, np.ndarray], model: ModelInfo) -> TestData:
    """Load user test data and check it fits the model.

    Raises:
        InvalidTestData: unreadable file, a missing or unknown input, a dtype of another kind
            (integer vs float), a wrong rank, a fixed dim that differs, or inputs disagreeing on
            the batch size.
    """
    if isinstance(source, str | Path):
        try:
            with np.load(source, allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise InvalidTestData(f"cannot read test data {source}: {exc}") from exc
    else:
        data = {k: np.asarray(v) for k, v in source.items()}
    expected = {t.name: t for t in model.inputs}
    missing = sorted(set(expected) - set(data))
    if missing:
        raise InvalidTestData(
            f"test data lacks inputs {missing}; the model needs {sorted(expected)}"
        )
    unknown = sorted(set(data) - set(expected))
    if unknown:
        raise InvalidTestData(
            f"test data has unknown inputs {unknown}; the model takes {sorted(expected)}"
        )
    out: TestData = {}
    rows: int | None = None
    for name, info in expected.items():
        arr = data[name]
        if arr.dtype.kind != info.dtype.kind and not (
            arr.dtype.kind in "iu" and info.dtype.kind in "iu"
        ):
            raise InvalidTestData(
                f"test input {name!r} is {arr.dtype}; the model expects {info.dtype}"
            )
        if arr.ndim != len(info.shape):
            shapes = f"{list(arr.shape)}; the model expects {list(info.shape)}"
            raise InvalidTestData(f"test input {name!r} has shape {shapes}")
        for i, (got, want) in enumerate(zip(arr.shape, info.shape, strict=True)):
            if want >= 0 and got != want:
                raise InvalidTestData(
                    f"test input {name!r} has {got} at dim {i}; the model needs {want}"
                )
        if model.batchable:
            if rows is not None and arr.shape[0] != rows:
                raise InvalidTestData(
                    f"test inputs disagree on the batch size ({rows} and {arr.shape[0]})"
                )
            rows = arr.shape[0]
        if (
            name == model.token_input
            and model.vocab_size
            and arr.size
            and (arr.min() < 0 or arr.max() >= model.vocab_size)
        ):
            raise InvalidTestData(
                f"test input {name!r} holds token ids {int(arr.min())}..{int(arr.max())}; "
                f"the model's vocabulary has {model.vocab_size} rows"
            )
        out[name] = np.ascontiguousarray(arr.astype(info.dtype, copy=False))
    return out


def _token_pool(model: ModelInfo) -> np.ndarray:
    """Token ids worth drawing: embedding rows of ordinary norm. Reserved and never-trained rows
    ([unused] tokens) sit at the extremes of the norm distribution; random ids from them give
    activations real text never produces."""
    norms = model.embedding_norms
    if norms is None or norms.size < 16:
        return np.arange(max(model.vocab_size, 2))
    lo, hi = np.quantile(norms, [0.1, 0.9])
    pool = np.flatnonzero((norms >= lo) & (norms <= hi))
    return pool if pool.size else np.arange(norms.size)


def synthesize(model: ModelInfo, rows: int, seq: int = 128, seed: int = 0) -> TestData:
    """Draw inputs from the signature: token ids from the embedding table's ordinary rows, masks of
    ones (a third of the rows padded at the end, as real batches are), zeros for other integer
    inputs (token types, positions), a normal distribution for floats."""
    rng = np.random.default_rng(seed)
    pool = _token_pool(model) if model.token_input else None
    lengths = np.full(rows, seq)
    if model.mask_input is not None and seq > 4:
        padded = rng.random(rows) < 1 / 3
        lengths[padded] = rng.integers(max(2, seq // 4), seq, size=int(padded.sum()))
    data: TestData = {}
    for info in model.inputs:
        dims = [rows if i == 0 and model.batchable else d for i, d in enumerate(info.shape)]
        dims = [seq if d < 0 else d for d in dims]
        if info.name == model.token_input and pool is not None:
            arr = rng.choice(pool, size=dims).astype(info.dtype)
            if arr.ndim == 2:
                for r, n in enumerate(lengths):
                    arr[r, n:] = 0
        elif info.name == model.mask_input and len(dims) == 2:
            arr = (np.arange(dims[1])[None, :] < lengths[:, None]).astype(info.dtype)
        elif info.dtype.kind in "iub":
            arr = np.zeros(dims, dtype=info.dtype)
        else:
            arr = rng.standard_normal(dims).astype(info.dtype)
        data[info.name] = arr
    return data
