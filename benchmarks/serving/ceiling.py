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
    rounds: int = 3,
) -> Ceiling:
    """Run each batch size for about `seconds` (after a warm-up) and count examples.

    The time is spent in `rounds` passes over all batch sizes and the best pass counts: a
    ceiling is what the machine can do, and one pass disturbed by another process would
    otherwise pull one batch size down.
    """
    sess = session(model, threads)
    names = list(outputs)
    feeds = {b: [batch_of(sample, b, start) for start in range(0, 4 * b, b)] for b in batches}
    for size in batches:
        for feed in feeds[size]:
            sess.run(names, feed)  # warm-up: first runs allocate and plan
    rate = dict.fromkeys(batches, 0.0)
    latency = dict.fromkeys(batches, float("inf"))
    for _ in range(rounds):
        for size in batches:
            runs = 0
            began = time.perf_counter()
            deadline = began + seconds / rounds
            while True:
                sess.run(names, feeds[size][runs % len(feeds[size])])
                runs += 1
                now = time.perf_counter()
                if now >= deadline and runs >= 2:
                    break
            rate[size] = max(rate[size], size * runs / (now - began))
            latency[size] = min(latency[size], (now - began) / runs)
    return Ceiling(threads=threads, examples_per_s=rate, latency_s=latency)


def reference(model: Path, inputs: Tensors, output: str, threads: int) -> npt.NDArray[Any]:
    """`output` for `inputs` computed in-process, to check what servers answer."""
    (result,) = session(model, threads).run([output], dict(inputs))
    return np.asarray(result)
