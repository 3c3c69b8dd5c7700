"""The in-process ceiling: what onnxruntime alone does on this machine, with no server at all.

Examples per second at each batch size, with `intra_op_num_threads` = the number of cores and the
same tokenized rows the servers get. The best batch is what a perfect batching server could reach
under enough load; batch 1 is what it could reach for one client at a time.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

Tensors = Mapping[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class Ceiling:
    """Examples/s by batch size, measured in-process."""

    threads: int
    examples_per_s: dict[int, float]
    latency_s: dict[int, float]

    @property
    def best_batch(self) -> int:
        return max(self.examples_per_s, key=lambda b: self.examples_per_s[b])

    @property
    def best(self) -> float:
        return self.examples_per_s[self.best_batch]

    @property
    def batch1(self) -> float:
        return self.examples_per_s.get(1, float("nan"))


def session(model: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def batch_of(sample: Tensors, size: int, start: int = 0) -> dict[str, npt.NDArray[Any]]:
    """`size` rows of `sample` from `start`, cycling when it runs out of rows."""
    n = len(next(iter(sample.values())))
    index = (np.arange(size) + start) % n
    return {name: np.ascontiguousarray(array[index]) for name, array in sample.items()}


def measure(
    model: Path,
    sample: Tensors,
    batches: Sequence[int],
    seconds: float,
    threads: int,
    outputs: Sequence[str],
) -> Ceiling:
    """Run each batch size for about `seconds` (after a warm-up) and count examples."""
    sess = session(model, threads)
    names = list(outputs)
    rate: dict[int, float] = {}
    latency: dict[int, float] = {}
    for size in batches:
        feeds = [batch_of(sample, size, start) for start in range(0, 4 * size, size)]
        for feed in feeds:
            sess.run(names, feed)  # warm-up: first runs allocate and plan
        runs = 0
        began = time.perf_counter()
        deadline = began + seconds
        while True:
            sess.run(names, feeds[runs % len(feeds)])
            runs += 1
            now = time.perf_counter()
            if now >= deadline and runs >= 3:
                break
        elapsed = now - began
        rate[size] = size * runs / elapsed
        latency[size] = elapsed / runs
    return Ceiling(threads=threads, examples_per_s=rate, latency_s=latency)


def reference(model: Path, inputs: Tensors, output: str, threads: int) -> npt.NDArray[Any]:
    """`output` for `inputs` computed in-process, to check what servers answer."""
    (result,) = session(model, threads).run([output], dict(inputs))
    return np.asarray(result)
