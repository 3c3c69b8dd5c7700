"""The in-process ceiling: what onnxruntime alone does on this machine, with no server at all.

Examples per second at each batch size, with `intra_op_num_threads` = the number of cores and the
same tokenized rows the servers get. The best batch is what a perfect batching server could reach
under enough load; batch 1 is what it could reach for one client at a time. One `InProcess`
keeps its session for the whole run: a full sweep over batch sizes first, then the best batch and
batch 1 again in every round, so each round's servers are compared with that round's ceiling.
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

from autoai.testing import machine_busy_seconds

Tensors = Mapping[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class Ceiling:
    """Examples/s by batch size, measured in-process, and the CPU the rest of the machine used."""

    threads: int
    examples_per_s: dict[int, float]
    latency_s: dict[int, float]
    other_cpu: float = 0.0  # cores busy outside this process while it ran: well above 0 spoils it

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


class InProcess:
    """One onnxruntime session on `model`, measured at any batch sizes, as often as asked."""

    def __init__(self, model: Path, sample: Tensors, threads: int, outputs: Sequence[str]):
        self.threads = threads
        self._sess = session(model, threads)
        self._names = list(outputs)
        self._sample = sample
        self._feeds: dict[int, list[dict[str, npt.NDArray[Any]]]] = {}

    def _feed(self, size: int) -> list[dict[str, npt.NDArray[Any]]]:
        if size not in self._feeds:
            self._feeds[size] = [batch_of(self._sample, size, s) for s in range(0, 4 * size, size)]
        return self._feeds[size]

    def measure(self, batches: Sequence[int], seconds: float, passes: int = 3) -> Ceiling:
        """Run each batch size for about `seconds` (after a warm-up) and count examples.

        The time is spent in `passes` passes over all batch sizes and the best pass counts: a
        ceiling is what the machine can do, and one pass disturbed by another process would
        otherwise pull one batch size down.
        """
        for size in batches:
            for feed in self._feed(size):
                self._sess.run(self._names, feed)  # warm-up: first runs allocate and plan
        rate = dict.fromkeys(batches, 0.0)
        latency = dict.fromkeys(batches, float("inf"))
        machine_before, own_before = machine_busy_seconds(), time.process_time()
        began_all = time.perf_counter()
        for _ in range(passes):
            for size in batches:
                feeds = self._feed(size)
                runs = 0
                began = time.perf_counter()
                deadline = began + seconds / passes
                while True:
                    self._sess.run(self._names, feeds[runs % len(feeds)])
                    runs += 1
                    now = time.perf_counter()
                    if now >= deadline and runs >= 2:
                        break
                rate[size] = max(rate[size], size * runs / (now - began))
                latency[size] = min(latency[size], (now - began) / runs)
        elapsed = time.perf_counter() - began_all
        own = time.process_time() - own_before
        other = max(0.0, machine_busy_seconds() - machine_before - own) / elapsed
        return Ceiling(self.threads, rate, latency, other)


def reference(model: Path, inputs: Tensors, output: str, threads: int) -> npt.NDArray[Any]:
    """`output` for `inputs` computed in-process, to check what servers answer."""
    (result,) = session(model, threads).run([output], dict(inputs))
    return np.asarray(result)
