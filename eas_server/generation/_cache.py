"""Where the key/value caches live, and the decoder steps that read and write them. The scheduler
decides which rows run; a ``Cache`` holds the rows' keys and values and runs the decoder over
them, so that a device runtime can keep them on the device (blade's CUDA runtime) while this
module's ``HostCache`` keeps them in numpy for ONNX Runtime on the CPU.

``HostCache`` holds two buffers of ``capacity`` rows, batch first, so that the running rows
``[0, n)`` are one contiguous slice handed to the runtime without a copy:

- ``cross``: ``[capacity, L, 2, H, F, D]``, each row's cross-attention keys/values, written once
  when its request is admitted (the encoder's output);
- ``self``: ``[capacity, L, 2, H, S, D]``, the decoder's own keys/values, ``S`` a bucket (16, 32,
  ... up to the positional table) that grows when the longest row needs it and shrinks when it
  leaves: attention runs over the bucket, entries past a row's position masked by the graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

__all__ = ["Cache", "DecodeFn", "HostCache", "buckets"]

DecodeFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""``decoder.onnx``: (tokens, positions, self_cache, cross_cache) -> (logits, new_kv)."""


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
        self.cross: np.ndarray | None = None
        self.self_: np.ndarray | None = None

    def put_cross(self, row: int, encoded: Any, index: int) -> None:
        cross = np.asarray(encoded)
        if self.cross is None:
            self.cross = np.zeros((self.capacity, *cross.shape[1:]), dtype=cross.dtype)
            layers, two, heads, _, dim = cross.shape[1:]
            shape = (self.capacity, layers, two, heads, self.sizes[0], dim)
            self.self_ = np.zeros(shape, dtype=cross.dtype)
        self.cross[row] = cross[index]

    def fit(self, n: int, need: int) -> None:
        assert self.self_ is not None, "fit() before any row was admitted"
        size = next(b for b in self.sizes if b >= need)
        current = self.self_.shape[4]
        if size == current or (size < current and need > size // 2 + 1):
            return  # shrink only when well inside the smaller bucket (no back and forth)
        resized = np.zeros((*self.self_.shape[:4], size, self.self_.shape[5]), self.self_.dtype)
        keep = min(size, current)
        resized[:n, ..., :keep, :] = self.self_[:n, ..., :keep, :]
        self.self_ = resized

    def prefill(self, start: int, count: int, prompt: np.ndarray) -> np.ndarray:
        assert self.cross is not None and self.self_ is not None
        rows = slice(start, start + count)
        layers, two, heads, _, dim = self.self_.shape[1:]
        empty = np.zeros((count, layers, two, heads, 0, dim), dtype=self.self_.dtype)
        logits, new_kv = self._decode(
            np.ascontiguousarray(prompt), np.zeros(count, np.int64), empty, self.cross[rows]
        )
        self.self_[rows, ..., : prompt.shape[1], :] = new_kv
        return np.asarray(logits[:, -1, :])

    def step(self, n: int, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        assert self.cross is not None and self.self_ is not None
        logits, new_kv = self._decode(
            np.ascontiguousarray(tokens[:, None]), positions, self.self_[:n], self.cross[:n]
        )
        self.self_[np.arange(n), :, :, :, positions, :] = new_kv[:, :, :, :, 0, :]
        return np.asarray(logits[:, 0, :])

    def move(self, src: int, dst: int) -> None:
        assert self.cross is not None and self.self_ is not None
        self.cross[dst] = self.cross[src]
        self.self_[dst] = self.self_[src]

    def reorder(self, rows: np.ndarray, sources: np.ndarray) -> None:
        assert self.self_ is not None
        self.self_[rows] = self.self_[sources]
