"""One optimize run's state: the fp32 CPU reference, plain ORT's timings on the device, and the
evaluation of each candidate (numeric gates, the task gate of a bundle with an evaluation set,
timing) into the report's pass entries."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._hardware import Hardware
from ._inputs import TestData
from ._model import ModelInfo
from ._passes import Candidate
from ._runtime import BladeRuntime, RuntimeConfig
from ._task import TaskGate
from ._verify import Gate, check, compare, gate_for, masked

__all__ = ["ProgressFn", "Session", "padding", "rows", "run_all", "time_median"]

log = logging.getLogger("blade")

ProgressFn = Callable[[str, str], None]
"""``progress(pass_name, status)``: called as each pass starts and ends."""


def padding(model: ModelInfo) -> dict[str, Any]:
    """Sequence padding is safe for BERT-like models with a mask: padded tokens are masked out."""
    if not (model.bert_like and model.mask_input):
        return {}
    seq_inputs = {t.name: [1, 0] for t in model.inputs if len(t.shape) == 2 and t.shape[1] == -1}
    seq_outputs = {t.name: 1 for t in model.outputs if len(t.shape) >= 3 and t.shape[1] == -1}
    return {"pad_inputs": seq_inputs, "pad_outputs": seq_outputs}


def time_median(
    runtime: BladeRuntime, feed: Mapping[str, np.ndarray], budget_s: float = 1.0
) -> float:
    """Median latency in seconds: 2 warm-up runs, then at least 3 and at most 50 timed runs, or
    until ``budget_s`` has passed."""
    for _ in range(2):
        runtime.run(feed)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (len(times) < 50 and time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        runtime.run(feed)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rows(data: TestData, n: int) -> dict[str, np.ndarray]:
    """The first ``n`` examples of the test data, repeated when there are fewer."""
    have = next(iter(data.values())).shape[0]
    idx = np.arange(n) % have
    return {k: np.ascontiguousarray(v[idx]) for k, v in data.items()}


def run_all(runtime: BladeRuntime, data: TestData, chunk: int) -> dict[str, np.ndarray]:
    rows = next(iter(data.values())).shape[0]
    parts = [
        runtime.run({k: v[i : i + chunk] for k, v in data.items()}) for i in range(0, rows, chunk)
    ]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class Session:
    """State of one optimize() call: the model, data, reference, plain timings, the record."""

    def __init__(
        self,
        model: ModelInfo,
        hw: Hardware,
        data: TestData,
        batch_sizes: Sequence[int],
        tolerance: float | Mapping[str, float] | None,
        buckets: list[list[int]],
        workdir: Path,
        progress: ProgressFn | None,
        task: TaskGate | None = None,
    ):
        self.model, self.hw, self.data = model, hw, data
        self.task = task
        self.batch_sizes = list(batch_sizes)
        self.tolerance = tolerance
        self.buckets = buckets
        self.workdir = workdir
        self.progress = progress
        self.chunk = max(self.batch_sizes)
        self.passes: list[dict[str, Any]] = []
        self.mask = data.get(model.mask_input) if model.mask_input else None
        self.token_outputs = list(padding(model).get("pad_outputs", {}))
        reference_runtime = BladeRuntime(
            model.path, RuntimeConfig(provider="cpu", graph_level="disabled")
        )
        self.reference = self.masked(run_all(reference_runtime, data, self.chunk))
        self.plain_config = RuntimeConfig(provider=hw.device)
        plain = BladeRuntime(model.path, self.plain_config)
        self.plain_latency = {b: time_median(plain, rows(data, b)) for b in self.batch_sizes}
        self.plain_metrics = compare(self.reference, self.masked(run_all(plain, data, self.chunk)))
        if task is not None:
            task.start(plain)
        self.passing: list[tuple[Candidate, dict[int, float]]] = []
        self.last_latency: dict[int, float] = {}

    def masked(self, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return masked(outputs, self.mask, self.token_outputs)

    def gate(self, tier: str) -> Gate:
        """The tier's gate; a lossless rewrite is held to the device's own noise floor when that
        is above the default bound (fp32 on a GPU uses TF32 and other kernels than the CPU
        reference: plain ORT itself differs from the reference by that much)."""
        gate = gate_for(tier, self.tolerance)
        if tier == "lossless" and gate.rel_l2_max is not None:
            floor = max((m.rel_l2 for m in self.plain_metrics.values()), default=0.0)
            return Gate(max(gate.rel_l2_max, 4 * floor), gate.cosine_min, gate.top1_min)
        return gate

    def evaluate(self, candidate: Candidate, time_rejected: bool = False) -> bool:
        """Verify against the reference (and, with a task gate, score the labelled set); time it
        when it passes (or ``time_rejected``); record it either way. A rejected candidate is
        never chosen, whatever its time."""
        gate = self.gate(candidate.tier)
        runtime = BladeRuntime(candidate.model_path, candidate.runtime)
        metrics = compare(self.reference, self.masked(run_all(runtime, self.data, self.chunk)))
        passed, reason = check(metrics, gate)
        entry: dict[str, Any] = {
            "name": candidate.name,
            "tier": candidate.tier,
            "gate": gate.json(),
            "metrics": {k: m.json() for k, m in metrics.items()},
            "notes": candidate.notes,
        }
        if self.task is not None:
            # Both gates are reported whatever the other said: a numeric pass that the task
            # refuses is exactly what the user needs to see.
            task = self.task.judge(candidate.tier, runtime)
            entry["numeric"] = {"verdict": "passed" if passed else "rejected", "reason": reason}
            entry["task"] = task
            if passed and task["verdict"] == "rejected":
                passed, reason = False, f"task: {task['reason']} (numeric gate passed)"
        entry["verdict"] = "passed" if passed else "rejected"
        entry["reason"] = reason
        if passed or time_rejected:
            latency = {b: time_median(runtime, rows(self.data, b)) for b in self.batch_sizes}
            entry["latency_ms"] = {
                str(b): {"before": self.plain_latency[b] * 1e3, "after": t * 1e3}
                for b, t in latency.items()
            }
            entry["speedup"] = {str(b): self.plain_latency[b] / t for b, t in latency.items()}
            if passed:
                self.passing.append((candidate, latency))
            self.last_latency = latency
        self.passes.append(entry)
        return passed

    def attempt(
        self, name: str, build: Callable[[], Candidate | None], time_rejected: bool = False
    ) -> Candidate | None:
        """Build and evaluate one candidate; a build that raises is recorded as failed."""
        if self.progress:
            self.progress(name, "running")
        try:
            candidate = build()
        except Exception as exc:  # a pass that cannot apply must not stop the others
            log.info("pass %s failed: %s", name, exc)
            self.passes.append(
                {"name": name, "verdict": "failed", "reason": f"{type(exc).__name__}: {exc}"}
            )
            if self.progress:
                self.progress(name, "failed")
            return None
        if candidate is None:
            return None
        try:
            ok = self.evaluate(candidate, time_rejected)
        except Exception as exc:  # the runtime refused it (e.g. a CUDA graph over CPU nodes)
            log.info("pass %s failed to run: %s", name, exc)
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
            self.passes.append({"name": name, "verdict": "failed", "reason": reason})
            if self.progress:
                self.progress(name, "failed")
            return None
        if self.progress:
            self.progress(name, "passed" if ok else "rejected")
        return candidate if ok else None

    def skip(self, name: str, reason: str) -> None:
        self.passes.append({"name": name, "verdict": "skipped", "reason": reason})
        if self.progress:
            self.progress(name, "skipped")
