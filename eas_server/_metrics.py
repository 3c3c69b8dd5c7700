"""Prometheus metrics (prefix ``eas_``) and Triton-shaped statistics, fed by one observer (the
batcher's, and for a generative model the generation engine's too).

Metrics objects are built per server on an injected registry, never at import time. The
generation families (``eas_generation_*``) are created on a registry only once a generative model
uses it, so other servers' expositions do not list them.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["OUTCOMES", "TRIGGERS", "GenerationFamilies", "MetricFamilies", "ServerMetrics"]

_LATENCY_BUCKETS: tuple[float, ...] = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01)
_LATENCY_BUCKETS += (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
OUTCOMES: tuple[str, ...] = ("success", "bad_request", "not_found", "unauthorized", "too_large")
OUTCOMES += ("queue_full", "timeout", "unavailable", "error")
TRIGGERS = ("full", "delay", "idle", "split")


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * 1e9)

    def json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class _Stats:
    """Triton's ``/stats`` for one model version."""

    success: _Duration = field(default_factory=_Duration)
    fail: _Duration = field(default_factory=_Duration)
    queue: _Duration = field(default_factory=_Duration)
    compute_infer: _Duration = field(default_factory=_Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, _Duration] = field(default_factory=lambda: defaultdict(_Duration))


class GenerationFamilies:
    """The generation metric families of one registry (labelled like the others)."""

    def __init__(self, registry: CollectorRegistry, labels: tuple[str, ...]):
        self.time_to_first_token = Histogram(
            "eas_generation_time_to_first_token_seconds",
            "Time from a generation request's arrival to its first output token",
            labels, registry=registry, buckets=_LATENCY_BUCKETS,
        )  # fmt: skip
        self.time_per_output_token = Histogram(
            "eas_generation_time_per_output_token_seconds",
            "Mean time between a generation request's output tokens (requests of 2+ tokens)",
            labels, registry=registry, buckets=_LATENCY_BUCKETS,
        )  # fmt: skip
        self.output_tokens = Counter(
            "eas_generation_output_tokens", "Output tokens of finished generation requests",
            labels, registry=registry,
        )  # fmt: skip
        self.running = Gauge(
            "eas_generation_running_sequences", "Generation requests in the running batch",
            labels, registry=registry,
        )  # fmt: skip
        self.waiting = Gauge(
            "eas_generation_waiting_sequences", "Generation requests waiting for decoder rows",
            labels, registry=registry,
        )  # fmt: skip

    def all(self) -> tuple[Histogram | Counter | Gauge, ...]:
        return (self.time_to_first_token, self.time_per_output_token, self.output_tokens,
                self.running, self.waiting)  # fmt: skip


@dataclass(frozen=True, slots=True)
class _GenerationSeries:
    """One model version's generation series."""

    time_to_first_token: Histogram
    time_per_output_token: Histogram
    output_tokens: Counter
    running: Gauge
    waiting: Gauge


class MetricFamilies:
    """The metric families of one registry, shared by every model version an instance hosts
    (one family per name in an exposition; each model version is a set of labels in it)."""

    def __init__(self, registry: CollectorRegistry):
        labels = self.labels = ("model", "version", "processor")
        self.registry = registry
        self._generation: GenerationFamilies | None = None
        self.request_duration = Histogram(
            "eas_request_duration_seconds", "Time from request received to response ready",
            labels, registry=registry, buckets=_LATENCY_BUCKETS,
        )  # fmt: skip
        self.queue_duration = Histogram(
            "eas_queue_duration_seconds", "Time a request waited in the batcher's queue",
            labels, registry=registry, buckets=_LATENCY_BUCKETS,
        )  # fmt: skip
        self.compute_duration = Histogram(
            "eas_compute_duration_seconds", "Runtime time of the batch that carried a request",
            labels, registry=registry, buckets=_LATENCY_BUCKETS,
        )  # fmt: skip
        self.batch_size = Histogram(
            "eas_batch_size", "Rows per runtime call", labels, registry=registry,
            buckets=_BATCH_BUCKETS,
        )  # fmt: skip
        self.requests = Counter(
            "eas_requests", "Requests by outcome", (*labels, "outcome"), registry=registry
        )
        self.batches = Counter(
            "eas_batches", "Batches by what fired them", (*labels, "trigger"), registry=registry
        )
        self.queue_depth = Gauge(
            "eas_queue_depth", "Requests waiting in the queue", labels, registry=registry
        )
        self.build = Gauge(
            "eas_build_info",
            "Always 1: the server's version, and whether it serves beyond loopback without a "
            "token (--insecure)",
            (*labels, "server_version", "insecure"),
            registry=registry,
        )

    def generation(self) -> GenerationFamilies:
        """The generation families (registered on first use)."""
        if self._generation is None:
            self._generation = GenerationFamilies(self.registry, self.labels)
        return self._generation


class ServerMetrics:
    """One model version's metrics and statistics; also its batcher's ``BatchObserver`` and, for
    a generative model, its engine's ``GenerationObserver`` (``track_generation`` first).

    Args:
        registry: where they are registered (one per server; never the global registry).
        model, version, processor: the labels of every series.
        server_version: ``eas_build_info``'s ``server_version`` (the installed package's).
        insecure: ``eas_build_info``'s ``insecure`` label: it serves beyond loopback without a
            token, as ``--insecure`` allowed.
        families: the registry's families when the instance hosts several model versions
            (``MetricFamilies(registry)`` once); None: created here.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        model: str,
        version: str,
        processor: str,
        server_version: str = "0",
        insecure: bool = False,
        families: MetricFamilies | None = None,
    ):
        f = self.families = families if families is not None else MetricFamilies(registry)
        values = self._values = (model, version, processor)
        self._build = (*values, server_version, "true" if insecure else "false")
        self.registry = registry
        self.request_duration = f.request_duration.labels(*values)
        self.queue_duration = f.queue_duration.labels(*values)
        self.compute_duration = f.compute_duration.labels(*values)
        self.batch_size = f.batch_size.labels(*values)
        self.requests = {o: f.requests.labels(*values, o) for o in OUTCOMES}
        self.batches = {t: f.batches.labels(*values, t) for t in TRIGGERS}
        self.queue_depth = f.queue_depth.labels(*values)
        f.build.labels(*self._build).set(1)
        self._stats = _Stats()
        self._generation: _GenerationSeries | None = None
        self.memory: list[dict[str, Any]] = []
        """Triton's ``memory_usage`` entries (``{"type": "CPU"|"GPU", "id", "byte_size"}``):
        what loading this model version added, when the instance measured it."""

    @property
    def inference_count(self) -> int:
        """Rows run so far."""
        return self._stats.inference_count

    def remove(self) -> None:
        """Drop this model version's series (it was unloaded)."""
        f, values = self.families, self._values
        for family in (
            f.request_duration,
            f.queue_duration,
            f.compute_duration,
            f.batch_size,
            f.queue_depth,
        ):
            family.remove(*values)
        for outcome in OUTCOMES:
            f.requests.remove(*values, outcome)
        for trigger in TRIGGERS:
            f.batches.remove(*values, trigger)
        f.build.remove(*self._build)
        if self._generation is not None:
            for generation_family in f.generation().all():
                generation_family.remove(*values)
            self._generation = None

    def track_generation(self) -> None:
        """Create this model version's generation series (a generative model; idempotent), so
        that they are exposed, at zero, before its first request."""
        if self._generation is None:
            f, values = self.families.generation(), self._values
            self._generation = _GenerationSeries(
                f.time_to_first_token.labels(*values),
                f.time_per_output_token.labels(*values),
                f.output_tokens.labels(*values),
                f.running.labels(*values),
                f.waiting.labels(*values),
            )

    # generation observer (called on the engine's thread; prometheus_client is thread-safe)
    def on_first_token(self, seconds: float) -> None:
        if self._generation is not None:
            self._generation.time_to_first_token.observe(seconds)

    def on_finished(self, tokens: int, per_token_s: float | None) -> None:
        if self._generation is not None:
            self._generation.output_tokens.inc(tokens)
            if per_token_s is not None:
                self._generation.time_per_output_token.observe(per_token_s)

    def on_sequences(self, running: int, waiting: int) -> None:
        if self._generation is not None:
            self._generation.running.set(running)
            self._generation.waiting.set(waiting)

    # batcher observer
    def on_queue_depth(self, depth: int) -> None:
        self.queue_depth.set(depth)

    def on_batch(self, rows: int, trigger: str, compute_s: float, ok: bool) -> None:
        self.batch_size.observe(rows)
        self.batches[trigger].inc()
        stats = self._stats
        stats.execution_count += 1
        stats.inference_count += rows
        stats.batches[rows].add(compute_s)
        stats.last_inference_ms = int(time.time() * 1000)

    # per request
    def on_success(self, total_s: float, queue_s: float, compute_s: float) -> None:
        self.request_duration.observe(total_s)
        self.queue_duration.observe(queue_s)
        self.compute_duration.observe(compute_s)
        self.requests["success"].inc()
        stats = self._stats
        stats.success.add(total_s)
        stats.queue.add(queue_s)
        stats.compute_infer.add(compute_s)

    def on_failure(self, outcome: str, total_s: float) -> None:
        self.requests[outcome].inc()
        self._stats.fail.add(total_s)

    def statistics(self, name: str, version: str) -> dict[str, Any]:
        """One ``model_stats`` entry of Triton's statistics extension."""
        s = self._stats
        zero = _Duration().json()

        def phases(infer: _Duration) -> dict[str, dict[str, int]]:
            # Input and output copies are part of compute_infer here; they count the same
            # requests (perf_analyzer refuses statistics whose three compute counts differ).
            untimed = {"count": infer.count, "ns": 0}
            return {
                "compute_input": untimed,
                "compute_infer": infer.json(),
                "compute_output": untimed,
            }

        return {
            "name": name,
            "version": version,
            "last_inference": s.last_inference_ms,
            "inference_count": s.inference_count,
            "execution_count": s.execution_count,
            "inference_stats": {
                "success": s.success.json(),
                "fail": s.fail.json(),
                "queue": s.queue.json(),
                **phases(s.compute_infer),
                "cache_hit": zero,
                "cache_miss": zero,
            },
            "batch_stats": [
                {"batch_size": size, **phases(d)} for size, d in sorted(s.batches.items())
            ],
            "memory_usage": list(self.memory),
        }
