"""The figures of a generate benchmark, from the streams its calls recorded (pure, no I/O).

Each call of the generate mode is one ``generate_stream``; it records when it was sent, when its
first token arrived, when its stream ended, and how many tokens it produced. Over a step's window
``[start, end]`` (clock of the recorder), counting the calls that *ended* in it, as the closed
loop of ``autoai bench`` does:

- QPS: those calls per second of window;
- RT: send to end of stream; TTFT (time to first token): send to the first event with tokens
  (a call that produced none has no TTFT);
- tokens/s: the output tokens of those calls, per second of window (what the model produced
  for completed work; tokens of calls still running at the window's edges are not counted);
- errors: failed calls that ended in the window, by kind (``error_kind``).

``to_generate_document`` is the ``--json`` form of a report (milliseconds, per second).
"""

from __future__ import annotations

from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ._stats import LatencySummary

__all__ = [
    "GENERATE_SCHEMA_VERSION",
    "GenerateReport",
    "GenerateSamples",
    "GenerateStats",
    "GenerateStep",
    "summarize_generate",
    "to_generate_document",
]

GENERATE_SCHEMA_VERSION = 1


class GenerateSamples:
    """The streams of one step, appended by the workers (four numbers a call)."""

    __slots__ = ("ended", "failed", "first", "sent", "tokens")

    def __init__(self) -> None:
        self.sent = array("d")
        self.first = array("d")  # NaN: no token came
        self.ended = array("d")
        self.tokens = array("q")
        self.failed: list[tuple[float, str]] = []  # (ended, kind)

    def ok(self, sent: float, first: float | None, ended: float, tokens: int) -> None:
        self.sent.append(sent)
        self.first.append(float("nan") if first is None else first)
        self.ended.append(ended)
        self.tokens.append(tokens)

    def error(self, ended: float, kind: str) -> None:
        self.failed.append((ended, kind))

    def __len__(self) -> int:
        return len(self.sent) + len(self.failed)


@dataclass(frozen=True, slots=True)
class GenerateStats:
    """What the callers saw over one step's window.

    Attributes:
        requests: streams that ended well in the window.
        qps: ``requests`` per second of window.
        rt: send to end of stream, seconds (``None``: no call).
        ttft: send to first token, seconds (``None``: no call produced a token).
        tokens: output tokens of those streams.
        tokens_per_s: ``tokens`` per second of window.
        errors: failed calls that ended in the window, by kind.
    """

    requests: int
    qps: float
    rt: LatencySummary | None
    ttft: LatencySummary | None
    tokens: int
    tokens_per_s: float
    errors: dict[str, int] = field(default_factory=dict)


def summarize_generate(samples: GenerateSamples, start: float, end: float) -> GenerateStats:
    """The figures of ``samples`` over the window ``[start, end]``.

    Raises:
        ValueError: the window is empty.
    """
    if not end > start:
        raise ValueError(f"the window must end after it starts, got [{start}, {end}]")
    ended = np.frombuffer(samples.ended, dtype=np.float64)
    inside = (ended >= start) & (ended <= end)
    sent = np.frombuffer(samples.sent, dtype=np.float64)[inside]
    first = np.frombuffer(samples.first, dtype=np.float64)[inside]
    tokens = int(np.frombuffer(samples.tokens, dtype=np.int64)[inside].sum())
    ttft = (first - sent)[~np.isnan(first)]
    window = end - start
    count = int(inside.sum())
    errors = Counter(kind for at, kind in samples.failed if start <= at <= end)
    return GenerateStats(
        requests=count,
        qps=count / window,
        rt=LatencySummary.of(ended[inside] - sent),
        ttft=LatencySummary.of(ttft),
        tokens=tokens,
        tokens_per_s=tokens / window,
        errors=dict(sorted(errors.items())),
    )


@dataclass(frozen=True, slots=True)
class GenerateStep:
    """One step's result: ``concurrency`` streams at all times over ``window_s``."""

    concurrency: int
    window_s: float
    interrupted: bool
    stats: GenerateStats


@dataclass
class GenerateReport:
    """A generate benchmark; ``steps`` grows as steps finish.

    Attributes:
        model, version: what was called.
        target: ``"sdk"`` (``AsyncModelClient``) or ``"url"`` (``AsyncEasClient`` on one
            instance).
        address: the store URL or the instance URL.
        audio_seconds: the length of each request's clip.
        max_new_tokens, num_beams: each request's parameters.
        warmup_s, duration_s: per step.
        steps: the finished steps.
        interrupted: the run was stopped before its last step ended.
    """

    model: str
    version: str | None
    target: Literal["sdk", "url"]
    address: str
    audio_seconds: float
    max_new_tokens: int | None
    num_beams: int
    warmup_s: float
    duration_s: float
    steps: list[GenerateStep] = field(default_factory=list)
    interrupted: bool = False


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1e3, 3)


def _latency(summary: LatencySummary | None) -> dict[str, float | None] | None:
    if summary is None:
        return None
    return {"mean": _ms(summary.mean), "p50": _ms(summary.p50), "p99": _ms(summary.p99)}


def to_generate_document(report: GenerateReport) -> dict[str, Any]:
    """The ``--json`` document of a generate benchmark (durations in ms)."""
    return {
        "schema_version": GENERATE_SCHEMA_VERSION,
        "mode": "generate",
        "model": report.model,
        "version": report.version,
        "target": {"kind": report.target, "address": report.address},
        "audio_seconds": report.audio_seconds,
        "max_new_tokens": report.max_new_tokens,
        "num_beams": report.num_beams,
        "warmup_s": report.warmup_s,
        "duration_s": report.duration_s,
        "interrupted": report.interrupted,
        "steps": [
            {
                "concurrency": s.concurrency,
                "window_s": round(s.window_s, 4),
                "interrupted": s.interrupted,
                "requests": s.stats.requests,
                "qps": round(s.stats.qps, 3),
                "rt_ms": _latency(s.stats.rt),
                "ttft_ms": _latency(s.stats.ttft),
                "tokens": s.stats.tokens,
                "tokens_per_s": round(s.stats.tokens_per_s, 2),
                "errors": dict(s.stats.errors),
            }
            for s in report.steps
        ],
    }
