"""What a benchmark produces: steps, their figures, and the ``--json`` document (pure).

The JSON document (``to_document``) is versioned by ``schema_version`` and described by
``JSON_SCHEMA`` (a JSON Schema, draft 2020-12); durations are in milliseconds there, rates per
second, CPU in percent of one core. Version 2 added ``processes``, ``client.total`` and the
generator's ``cpu_cores`` and ``per_process_cpu_percent``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from ._prom import ServerStats
from ._stats import ClientStats, GeneratorStats

__all__ = ["JSON_SCHEMA", "SCHEMA_VERSION", "BenchReport", "Step", "StepResult", "to_document"]

SCHEMA_VERSION = 2


@dataclass(frozen=True, slots=True)
class Step:
    """One load level: a closed loop of ``concurrency`` workers, or an open loop at ``rate``.

    Attributes:
        concurrency: closed loop: calls in flight at all times.
        rate: open loop: Poisson arrivals per second.
        max_in_flight: open loop: the most calls outstanding (later arrivals wait, and their
            wait counts in their latency).

    Raises:
        ValueError: not exactly one of ``concurrency`` and ``rate``, or a value out of range.
    """

    concurrency: int | None = None
    rate: float | None = None
    max_in_flight: int = 256

    def __post_init__(self) -> None:
        if (self.concurrency is None) == (self.rate is None):
            raise ValueError("a step has either a concurrency or a rate")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.rate is not None and not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"rate must be a finite number > 0, got {self.rate}")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight}")

    @property
    def mode(self) -> Literal["closed", "open"]:
        return "closed" if self.concurrency is not None else "open"

    @property
    def label(self) -> str:
        """``c=8`` or ``200/s``."""
        return f"c={self.concurrency}" if self.concurrency is not None else f"{self.rate:g}/s"


@dataclass(frozen=True, slots=True)
class StepResult:
    """The figures of one step over its measured window.

    Attributes:
        step: the load level.
        window_s: the measured window (after warmup), in seconds.
        interrupted: the run was stopped during this step; the window is shorter.
        client: what the calls saw.
        server: what the instances' ``/metrics`` saw over the window (``None``: no instance).
        generator: the generator's own CPU over the window.
    """

    step: Step
    window_s: float
    interrupted: bool
    client: ClientStats
    server: ServerStats | None
    generator: GeneratorStats


@dataclass
class BenchReport:
    """A benchmark run; ``steps`` grows as steps finish (so a stopped run has what it measured).

    Attributes:
        model, version: what was called (``version`` None: routed as published / the
            instance's).
        target: ``"sdk"`` (through ``AsyncModelClient``) or ``"url"`` (straight to one instance).
        address: the store URL or the instance URL.
        encoding: ``"binary"`` or ``"json"`` tensors.
        batch: rows per request.
        inputs: ``{"name", "datatype", "shape", "source"}`` per input (``"drawn"``/``"given"``).
        warmup_s, duration_s: per step.
        steps: the finished steps.
        interrupted: the run was stopped (Ctrl-C) before its last step ended.
        processes: the generator processes that shared every step's load.
    """

    model: str
    version: str | None
    target: Literal["sdk", "url"]
    address: str
    encoding: Literal["binary", "json"]
    batch: int
    inputs: list[dict[str, Any]]
    warmup_s: float
    duration_s: float
    steps: list[StepResult] = field(default_factory=list)
    interrupted: bool = False
    processes: int = 1


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 4)


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _client(c: ClientStats) -> dict[str, Any]:
    lat = c.latency
    return {
        "requests": c.requests,
        "qps": _round(c.qps),
        "rt_ms": None
        if lat is None
        else {
            "mean": _ms(lat.mean),
            "p50": _ms(lat.p50),
            "p90": _ms(lat.p90),
            "p99": _ms(lat.p99),
            "max": _ms(lat.max),
        },
        "errors": dict(c.errors),
        "total": {"ok": c.total_ok, "failed": c.total_failed},
    }


def _server(s: ServerStats | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {
        "instances": list(s.instances),
        "unreachable": list(s.unreachable),
        "requests": s.requests,
        "qps": _round(s.qps),
        "rt_ms": {"mean": _ms(s.rt_mean), "p50": _ms(s.rt_p50), "p99": _ms(s.rt_p99)},
        "queue_ms": _ms(s.queue_mean),
        "compute_ms": _ms(s.compute_mean),
        "batch_size": _round(s.batch_size_mean, 3),
        "batches": dict(s.batches),
        "errors": dict(s.errors),
    }


def _step(r: StepResult) -> dict[str, Any]:
    g = r.generator
    return {
        "mode": r.step.mode,
        "concurrency": r.step.concurrency,
        "rate": r.step.rate,
        "max_in_flight": r.step.max_in_flight if r.step.rate is not None else r.step.concurrency,
        "window_s": round(r.window_s, 4),
        "interrupted": r.interrupted,
        "client": _client(r.client),
        "server": _server(r.server),
        "generator": {
            "cpu_s": round(g.cpu_s, 4),
            "cpu_percent": round(g.cpu_percent, 1),
            "cpu_cores": round(g.cpu_cores, 3),
            "per_process_cpu_percent": [round(p, 1) for p in g.per_process_percent],
            "cpu_per_call_us": _round(g.cpu_per_call_us, 1),
            "saturated": g.saturated,
        },
    }


def to_document(report: BenchReport) -> dict[str, Any]:
    """The ``--json`` document of ``report`` (see ``JSON_SCHEMA``)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "model": report.model,
        "version": report.version,
        "target": {"kind": report.target, "address": report.address},
        "encoding": report.encoding,
        "batch": report.batch,
        "inputs": [dict(i) for i in report.inputs],
        "warmup_s": report.warmup_s,
        "duration_s": report.duration_s,
        "interrupted": report.interrupted,
        "processes": report.processes,
        "steps": [_step(s) for s in report.steps],
    }


# --------------------------------------------------------------------------------- the schema

_NUM: dict[str, Any] = {"type": "number"}
_NUM_OR_NULL: dict[str, Any] = {"type": ["number", "null"]}
_COUNTS: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "integer"}}
_STRINGS: dict[str, Any] = {"type": "array", "items": {"type": "string"}}


def _object(properties: dict[str, Any], *, nullable: bool = False) -> dict[str, Any]:
    return {
        "type": ["object", "null"] if nullable else "object",
        "required": list(properties),
        "additionalProperties": False,
        "properties": properties,
    }


JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "autoai bench --json",
    **_object(
        {
            "schema_version": {"const": SCHEMA_VERSION},
            "model": {"type": "string"},
            "version": {"type": ["string", "null"]},
            "target": _object({"kind": {"enum": ["sdk", "url"]}, "address": {"type": "string"}}),
            "encoding": {"enum": ["binary", "json"]},
            "batch": {"type": "integer"},
            "inputs": {
                "type": "array",
                "items": _object(
                    {
                        "name": {"type": "string"},
                        "datatype": {"type": "string"},
                        "shape": {"type": "array", "items": {"type": "integer"}},
                        "source": {"enum": ["drawn", "given"]},
                    }
                ),
            },
            "warmup_s": _NUM,
            "duration_s": _NUM,
            "interrupted": {"type": "boolean"},
            "processes": {"type": "integer"},
            "steps": {
                "type": "array",
                "items": _object(
                    {
                        "mode": {"enum": ["closed", "open"]},
                        "concurrency": {"type": ["integer", "null"]},
                        "rate": _NUM_OR_NULL,
                        "max_in_flight": {"type": "integer"},
                        "window_s": _NUM,
                        "interrupted": {"type": "boolean"},
                        "client": _object(
                            {
                                "requests": {"type": "integer"},
                                "qps": _NUM,
                                "rt_ms": _object(
                                    dict.fromkeys(("mean", "p50", "p90", "p99", "max"), _NUM),
                                    nullable=True,
                                ),
                                "errors": _COUNTS,
                                "total": _object(
                                    {"ok": {"type": "integer"}, "failed": {"type": "integer"}}
                                ),
                            }
                        ),
                        "server": _object(
                            {
                                "instances": _STRINGS,
                                "unreachable": _STRINGS,
                                "requests": {"type": "integer"},
                                "qps": _NUM,
                                "rt_ms": _object(
                                    dict.fromkeys(("mean", "p50", "p99"), _NUM_OR_NULL)
                                ),
                                "queue_ms": _NUM_OR_NULL,
                                "compute_ms": _NUM_OR_NULL,
                                "batch_size": _NUM_OR_NULL,
                                "batches": _COUNTS,
                                "errors": _COUNTS,
                            },
                            nullable=True,
                        ),
                        "generator": _object(
                            {
                                "cpu_s": _NUM,
                                "cpu_percent": _NUM,
                                "cpu_cores": _NUM,
                                "per_process_cpu_percent": {"type": "array", "items": _NUM},
                                "cpu_per_call_us": _NUM_OR_NULL,
                                "saturated": {"type": "boolean"},
                            }
                        ),
                    }
                ),
            },
        }
    ),
}
"""The JSON Schema of ``to_document``'s output."""
