"""Pure batch arithmetic: which requests may share a batch, merging their inputs, splitting the
outputs back, and cutting an oversized request into chunks. NumPy only; no I/O, no clocks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Padding", "group_key", "merge", "rows_of", "split_outputs", "split_rows"]

Arrays = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Padding:
    """Where a processor declares padding safe (e.g. a BERT model that pools with its mask).

    Attributes:
        inputs: input name -> (axis, pad value); the axis counts the batch dim as 0.
        outputs: output name -> axis that follows the padded input axis; it is cut back per
            request. Outputs not listed must not depend on the padded length.
    """

    inputs: Mapping[str, tuple[int, int | float]] = field(default_factory=dict)
    outputs: Mapping[str, int] = field(default_factory=dict)


def rows_of(inputs: Arrays) -> int:
    """The batch dimension shared by every input (callers validated that they agree)."""
    return int(next(iter(inputs.values())).shape[0])


def group_key(inputs: Arrays, padding: Padding | None = None) -> tuple[object, ...]:
    """Requests with equal keys may be concatenated: same names, datatypes and non-batch dims,
    except along axes where padding is declared safe."""
    key: list[object] = []
    for name in sorted(inputs):
        arr = inputs[name]
        dims: list[int] = list(arr.shape[1:])
        if padding is not None and name in padding.inputs:
            dims[padding.inputs[name][0] - 1] = -1
        key.append((name, arr.dtype.str, tuple(dims)))
    return tuple(key)


def _pad_to(arr: np.ndarray, axis: int, length: int, value: int | float) -> np.ndarray:
    missing = length - arr.shape[axis]
    if missing == 0:
        return arr
    widths = [(0, 0)] * arr.ndim
    widths[axis] = (0, missing)
    return np.pad(arr, widths, constant_values=value)


def merge(
    items: Sequence[Arrays], padding: Padding | None = None
) -> tuple[dict[str, np.ndarray], list[int]]:
    """Concatenate requests along the batch dim.

    Returns:
        The merged inputs and, per item, its length along the padded axis (empty when no padding
        applies), to cut outputs back with.
    """
    if len(items) == 1 and padding is None:
        return dict(items[0]), []
    names = list(items[0])
    lengths: list[int] = []
    merged: dict[str, np.ndarray] = {}
    for name in names:
        arrays = [it[name] for it in items]
        if padding is not None and name in padding.inputs:
            axis, value = padding.inputs[name]
            longest = max(a.shape[axis] for a in arrays)
            if not lengths:
                lengths = [a.shape[axis] for a in arrays]
            arrays = [_pad_to(a, axis, longest, value) for a in arrays]
        merged[name] = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
    return merged, lengths


def split_outputs(
    outputs: Arrays,
    rows: Sequence[int],
    lengths: Sequence[int] = (),
    padding: Padding | None = None,
) -> list[dict[str, np.ndarray]]:
    """Cut batch outputs back into one dict per request (views, no copies)."""
    if len(rows) == 1 and not lengths:
        return [dict(outputs)]
    bounds = np.cumsum([0, *rows])
    result: list[dict[str, np.ndarray]] = [{} for _ in rows]
    for name, arr in outputs.items():
        axis = padding.outputs.get(name) if padding is not None and lengths else None
        for i in range(len(rows)):
            part = arr[bounds[i] : bounds[i + 1]]
            if axis is not None:
                index = [slice(None)] * part.ndim
                index[axis] = slice(0, lengths[i])
                part = part[tuple(index)]
            result[i][name] = part
    return result


def split_rows(inputs: Arrays, max_rows: int) -> list[dict[str, np.ndarray]]:
    """Cut a request into chunks of at most ``max_rows`` rows (views)."""
    total = rows_of(inputs)
    return [
        {name: arr[start : start + max_rows] for name, arr in inputs.items()}
        for start in range(0, total, max_rows)
    ]
