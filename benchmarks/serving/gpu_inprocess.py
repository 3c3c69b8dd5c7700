"""The runtime alone, no server: what eas-server's two processors run, called in-process.

- ``onnx``: eas-server's onnx processor (``OnnxProcessor``: plain ONNX Runtime, CUDA provider on
  the GPU), as ``--processor onnx`` loads it;
- ``blade``: the artifact's runtime (``load_artifact`` + ``BladeRuntime``: fp16, IO binding and a
  CUDA graph per shape bucket on the GPU), as ``--processor blade`` runs it.

Both are asked for ``sentence_embedding`` only, on full-length seq-128 rows; per batch size, the
median (and p90) of ``loops`` timed calls after 5 untimed ones: ms per batch and examples/s.
It runs in a child process of its own, so that its CUDA context and memory are gone before a
server starts.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .gpu_report import Table
from .gpu_setup import OUTPUT

__all__ = ["InProcess", "Timing", "measure", "table"]

Feed = dict[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class Timing:
    runtime: str
    batch: int
    ms: float
    p90_ms: float
    examples_per_s: float


@dataclass(frozen=True)
class InProcess:
    """The timings, and the onnx runtime's embedding of row 0 (the reference of the probes)."""

    timings: list[Timing]
    embedding: npt.NDArray[np.float32]
    providers: dict[str, str] = field(default_factory=dict)

    def get(self, runtime: str, batch: int) -> Timing | None:
        return next((t for t in self.timings if (t.runtime, t.batch) == (runtime, batch)), None)


def _time(run: Callable[[Feed], object], feed: Feed, loops: int) -> tuple[float, float]:
    for _ in range(5):
        run(feed)
    samples = []
    for _ in range(loops):
        t0 = time.perf_counter()
        run(feed)
        samples.append(time.perf_counter() - t0)
    return float(np.median(samples)) * 1e3, float(np.percentile(samples, 90)) * 1e3


def _measure(
    model: str,
    artifact: str,
    rows: Mapping[str, npt.NDArray[Any]],
    batches: Sequence[int],
    loops: int,
) -> InProcess:
    from blade import BladeRuntime, load_artifact
    from eas_server.processors.onnx import OnnxProcessor

    wanted = frozenset({OUTPUT})
    onnx = OnnxProcessor(model)
    onnx.load()
    art = load_artifact(artifact)
    blade = BladeRuntime(art.model_path, art.runtime)
    runners: dict[str, Callable[[Feed], object]] = {
        "onnx": lambda feed: onnx.run(feed, 0, wanted),
        "blade": lambda feed: blade.run(feed, wanted),
    }
    n = next(iter(rows.values())).shape[0]
    timings = []
    for name, run in runners.items():
        for batch in batches:
            feed = {k: np.ascontiguousarray(v[np.arange(batch) % n]) for k, v in rows.items()}
            ms, p90 = _time(run, feed, loops)
            timings.append(Timing(name, batch, ms, p90, batch / ms * 1e3))
    first = {k: np.ascontiguousarray(v[:1]) for k, v in rows.items()}
    embedding = np.asarray(onnx.run(first, 0, wanted)[OUTPUT][0], dtype=np.float32)
    providers = {
        "onnx": onnx.device,
        "blade": f"{art.runtime.provider}, {art.doc.get('candidate')}, "
        f"{len(art.runtime.buckets)} graph buckets",
    }
    return InProcess(timings, embedding, providers)


def measure(
    model: str,
    artifact: str,
    rows: Mapping[str, npt.NDArray[Any]],
    batches: Sequence[int],
    loops: int,
) -> InProcess:
    """``_measure`` in a fresh child process (its GPU memory is released when it ends)."""
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(_measure, model, artifact, dict(rows), tuple(batches), loops).result()


def table(result: InProcess, where: str) -> Table:
    t = Table(
        f"in-process runtime, seq 128 full length, {OUTPUT} only ({where})",
        ["runtime", "batch", "ms / batch (p50)", "p90 ms", "examples/s"],
    )
    for x in result.timings:
        t.add(x.runtime, x.batch, f"{x.ms:.3f}", f"{x.p90_ms:.3f}", f"{x.examples_per_s:,.0f}")
    t.note = "; ".join(f"{k}: {v}" for k, v in result.providers.items())
    return t
