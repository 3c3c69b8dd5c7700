"""Where the key/value caches live, and the decoder steps that read and write them. The scheduler
decides which rows run; a ``Cache`` holds the rows' keys and values and runs the decoder over
them, so that a device runtime can keep them on the device (blade's CUDA runtime) while this
module's ``HostCache`` keeps them in numpy for ONNX Runtime on the CPU.

``HostCache`` holds, per decoder layer, key and value buffers of ``capacity`` rows, batch
first, so that the running rows ``[0, n)`` are contiguous slices handed to the runtime without a
copy:

- ``cross``: ``[capacity, H, F, D]`` each, the rows' cross-attention keys/values, written once when
  a request is admitted (the encoder's output);
- ``self_``: ``[capacity, H, S, D]`` each, the decoder's own keys/values, ``S`` a bucket (16, 32,
  ... up to the positional table) that grows when the longest row needs it and shrinks when it
  leaves: attention runs over the bucket, entries past a row's position masked by the graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

__all__ = ["Cache", "DecodeFn", "HostCache", "buckets"]

Arrays = list[np.ndarray]
DecodeFn = Callable[[np.ndarray, np.ndarray, Arrays, Arrays], tuple[np.ndarray, Arrays]]
"""``decoder.onnx``: (tokens, positions, self k/v per layer, cross k/v per layer) -> (logits,
the new k/v per layer); the k/v lists in ``cache_names`` order."""


def buckets(limit: int, smallest: int = 16) -> tuple[int, ...]:
    """Cache lengths: powers of two from ``smallest``, the last one ``limit``."""
    sizes: list[int] = []
    size = smallest
    while size < limit:
        sizes.append(size)
        size *= 2
    return (*sizes, limit)


class Cache(Protocol):
    """The running rows' caches and the decoder over them (rows ``[0, n)`` are running)."""

    def put_cross(self, row: int, encoded: Any, index: int) -> None:
        """Row ``row`` attends to item ``index`` of an encoder batch's output."""

    def fit(self, n: int, need: int) -> None:
        """Make room for ``need`` cache entries in the rows ``[0, n)`` (bucket changes)."""

    def prefill(self, start: int, count: int, prompt: np.ndarray) -> np.ndarray:
        """Run the prompt ``[count, P]`` through rows ``[start, start + count)`` from an empty
        cache, keep its keys/values at ``[0, P)``; the last prompt token's logits ``[count, V]``."""

    def step(self, n: int, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """One token per row ``[0, n)`` at ``positions``; keeps the new keys/values there; the
        logits ``[n, V]``."""

    def move(self, src: int, dst: int) -> None:
        """Row ``dst`` takes row ``src``'s caches (rows are compacted when one leaves)."""

    def reorder(self, rows: np.ndarray, sources: np.ndarray) -> None:
        """``rows[i]`` takes the self-attention cache of ``sources[i]`` (beams), all at once."""


class HostCache:
    """Caches in numpy, decoder steps through ``decode`` (ONNX Runtime on the CPU)."""

    def __init__(self, decode: DecodeFn, capacity: int, sizes: tuple[int, ...]):
        self._decode = decode
        self.capacity = capacity
        self.sizes = sizes
        self.cross: Arrays = []
        self.self_: Arrays = []

    def put_cross(self, row: int, encoded: Any, index: int) -> None:
        """``encoded``: the encoder's outputs, one ``[B, H, F, D]`` array per name."""
        if not self.cross:
            self.cross = [np.zeros((self.capacity, *a.shape[1:]), a.dtype) for a in encoded]
            self.self_ = [
                np.zeros((self.capacity, a.shape[1], self.sizes[0], a.shape[3]), a.dtype)
                for a in encoded
            ]
        for buffer, array in zip(self.cross, encoded, strict=True):
            buffer[row] = array[index]

    @property
    def length(self) -> int:
        """The self-attention bucket now allocated."""
        return int(self.self_[0].shape[2])

    def fit(self, n: int, need: int) -> None:
        assert self.self_, "fit() before any row was admitted"
        size = next(b for b in self.sizes if b >= need)
        current = self.length
        if size == current or (size < current and need > size // 2 + 1):
            return  # shrink only when well inside the smaller bucket (no back and forth)
        keep = min(size, current)
        resized = []
        for old in self.self_:
            new = np.zeros((old.shape[0], old.shape[1], size, old.shape[3]), old.dtype)
            new[:n, :, :keep] = old[:n, :, :keep]
            resized.append(new)
        self.self_ = resized

    def prefill(self, start: int, count: int, prompt: np.ndarray) -> np.ndarray:
        rows = slice(start, start + count)
        empty = [np.zeros((count, a.shape[1], 0, a.shape[3]), a.dtype) for a in self.self_]
        logits, new = self._decode(
            np.ascontiguousarray(prompt),
            np.zeros(count, np.int64),
            empty,
            [a[rows] for a in self.cross],
        )
        for buffer, kv in zip(self.self_, new, strict=True):
            buffer[rows, :, : prompt.shape[1]] = kv
        return np.asarray(logits[:, -1, :])

    def step(self, n: int, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        logits, new = self._decode(
            np.ascontiguousarray(tokens[:, None]),
            positions,
            [a[:n] for a in self.self_],
            [a[:n] for a in self.cross],
        )
        rows = np.arange(n)
        for buffer, kv in zip(self.self_, new, strict=True):
            buffer[rows, :, positions] = kv[:, :, 0]
        return np.asarray(logits[:, 0, :])

    def move(self, src: int, dst: int) -> None:
        for buffer in (*self.cross, *self.self_):
            buffer[dst] = buffer[src]

    def reorder(self, rows: np.ndarray, sources: np.ndarray) -> None:
        for buffer in self.self_:
            buffer[rows] = buffer[sources]
