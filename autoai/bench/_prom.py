"""Server-side figures of a step from two scrapes of each instance's ``/metrics`` (pure).

An instance's text is parsed with ``prometheus_client.parser`` into a ``ServerSnapshot`` of the
``eas_`` families the model server exports (``eas_server._metrics``): requests by outcome,
batches by trigger, and the request / queue / compute duration and batch size histograms. An
instance serves one model version, so series are summed over their other labels.

``server_stats`` subtracts the snapshot taken at the window's start from the one taken at its
end, instance by instance (a counter that went down means the instance restarted: its new value
is the increase, as Prometheus' ``increase()`` has it), and adds the instances up.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Histogram", "ServerSnapshot", "ServerStats", "parse_metrics", "server_stats"]

_REQUESTS = "eas_requests"
_BATCHES = "eas_batches"
_HISTOGRAMS = {
    "eas_request_duration_seconds": "request_duration",
    "eas_queue_duration_seconds": "queue_duration",
    "eas_compute_duration_seconds": "compute_duration",
    "eas_batch_size": "batch_size",
}


@dataclass(frozen=True, slots=True)
class Histogram:
    """A Prometheus histogram summed over its series: count, sum, cumulative buckets by ``le``."""

    count: float = 0.0
    sum: float = 0.0
    buckets: tuple[tuple[float, float], ...] = ()

    def minus(self, earlier: Histogram) -> Histogram:
        """The observations made since ``earlier`` (all of them when the instance restarted)."""
        if self.count < earlier.count:
            return self
        before = dict(earlier.buckets)
        return Histogram(
            self.count - earlier.count,
            self.sum - earlier.sum,
            tuple((le, n - before.get(le, 0.0)) for le, n in self.buckets),
        )

    def plus(self, other: Histogram) -> Histogram:
        merged = dict(self.buckets)
        for le, n in other.buckets:
            merged[le] = merged.get(le, 0.0) + n
        return Histogram(
            self.count + other.count, self.sum + other.sum, tuple(sorted(merged.items()))
        )

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count > 0 else None

    def quantile(self, q: float) -> float | None:
        """The ``q``-quantile estimated from the buckets as PromQL's ``histogram_quantile`` does
        (linear inside the bucket; the highest finite bound when it falls in ``+Inf``)."""
        if self.count <= 0 or not self.buckets:
            return None
        total = self.buckets[-1][1]
        if total <= 0:
            return None
        rank = q * total
        lower, below = 0.0, 0.0
        for le, cumulative in self.buckets:
            if cumulative >= rank:
                if math.isinf(le):
                    return lower
                inside = cumulative - below
                if inside <= 0:
                    return le
                return lower + (le - lower) * (rank - below) / inside
            lower, below = le, cumulative
        return lower


@dataclass(frozen=True, slots=True)
class ServerSnapshot:
    """One scrape of one instance (or a sum of instances)."""

    requests: Mapping[str, float] = field(default_factory=dict)
    batches: Mapping[str, float] = field(default_factory=dict)
    request_duration: Histogram = Histogram()
    queue_duration: Histogram = Histogram()
    compute_duration: Histogram = Histogram()
    batch_size: Histogram = Histogram()


def _add(into: dict[str, float], key: str, value: float) -> None:
    into[key] = into.get(key, 0.0) + value


def parse_metrics(text: str) -> ServerSnapshot:
    """The ``eas_`` figures of one ``/metrics`` text (families it lacks count as zero).

    Raises:
        ValueError: the text is not the Prometheus text format.
    """
    requests: dict[str, float] = {}
    batches: dict[str, float] = {}
    hist: dict[str, dict[str, float]] = {n: {} for n in _HISTOGRAMS}
    buckets: dict[str, dict[float, float]] = {n: {} for n in _HISTOGRAMS}
    for family in text_string_to_metric_families(text):
        if family.name == _REQUESTS:
            for s in family.samples:
                if s.name == f"{_REQUESTS}_total":
                    _add(requests, s.labels.get("outcome", ""), s.value)
        elif family.name == _BATCHES:
            for s in family.samples:
                if s.name == f"{_BATCHES}_total":
                    _add(batches, s.labels.get("trigger", ""), s.value)
        elif family.name in _HISTOGRAMS:
            for s in family.samples:
                suffix = s.name[len(family.name) :]
                if suffix == "_bucket":
                    le = float(s.labels["le"])
                    buckets[family.name][le] = buckets[family.name].get(le, 0.0) + s.value
                elif suffix in ("_count", "_sum"):
                    _add(hist[family.name], suffix, s.value)
    made = {
        attr: Histogram(
            hist[name].get("_count", 0.0),
            hist[name].get("_sum", 0.0),
            tuple(sorted(buckets[name].items())),
        )
        for name, attr in _HISTOGRAMS.items()
    }
    return ServerSnapshot(requests=requests, batches=batches, **made)


def _increase(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in after.items():
        was = before.get(key, 0.0)
        out[key] = value - was if value >= was else value
    return out


def _delta(before: ServerSnapshot, after: ServerSnapshot) -> ServerSnapshot:
    return ServerSnapshot(
        requests=_increase(after.requests, before.requests),
        batches=_increase(after.batches, before.batches),
        request_duration=after.request_duration.minus(before.request_duration),
        queue_duration=after.queue_duration.minus(before.queue_duration),
        compute_duration=after.compute_duration.minus(before.compute_duration),
        batch_size=after.batch_size.minus(before.batch_size),
    )


def _sum(snapshots: Iterable[ServerSnapshot]) -> ServerSnapshot:
    total = ServerSnapshot()
    for s in snapshots:
        requests, batches = dict(total.requests), dict(total.batches)
        for k, v in s.requests.items():
            _add(requests, k, v)
        for k, v in s.batches.items():
            _add(batches, k, v)
        total = ServerSnapshot(
            requests=requests,
            batches=batches,
            request_duration=total.request_duration.plus(s.request_duration),
            queue_duration=total.queue_duration.plus(s.queue_duration),
            compute_duration=total.compute_duration.plus(s.compute_duration),
            batch_size=total.batch_size.plus(s.batch_size),
        )
    return total


@dataclass(frozen=True, slots=True)
class ServerStats:
    """What the instances saw over a step's window (durations in seconds).

    Attributes:
        instances: the instances scraped at both ends of the window.
        unreachable: instances whose ``/metrics`` could not be read at one end or both.
        requests: requests answered successfully.
        qps: ``requests`` per second of window.
        errors: requests that failed, by the server's outcome (``queue_full``, ...).
        rt_mean, rt_p50, rt_p99: time from request received to response ready (mean exact;
            quantiles estimated from the histogram's buckets); ``None`` without requests.
        queue_mean: mean time a request waited in the batcher's queue.
        compute_mean: mean runtime time of the batch that carried a request.
        batch_size_mean: mean rows per runtime call.
        batches: runtime calls by what fired them (``full``, ``delay``, ``idle``, ``split``).
    """

    instances: list[str]
    unreachable: list[str]
    requests: int
    qps: float
    errors: dict[str, int]
    rt_mean: float | None
    rt_p50: float | None
    rt_p99: float | None
    queue_mean: float | None
    compute_mean: float | None
    batch_size_mean: float | None
    batches: dict[str, int]


def server_stats(
    before: Mapping[str, ServerSnapshot],
    after: Mapping[str, ServerSnapshot],
    seconds: float,
    failed: Iterable[str] = (),
) -> ServerStats:
    """The figures of the window between two scrapes (instance URL -> snapshot each).

    Instances missing from either scrape, and the ``failed`` ones, are listed as ``unreachable``
    and left out.

    Raises:
        ValueError: ``seconds`` is not positive.
    """
    if not seconds > 0:
        raise ValueError(f"the window must last > 0 s, got {seconds!r}")
    both = sorted(set(before) & set(after))
    missing = sorted((set(before) ^ set(after)) | set(failed))
    total = _sum(_delta(before[url], after[url]) for url in both)
    success = round(total.requests.get("success", 0.0))
    errors = {k: round(v) for k, v in sorted(total.requests.items()) if k != "success" and v > 0}
    return ServerStats(
        instances=both,
        unreachable=missing,
        requests=success,
        qps=success / seconds,
        errors=errors,
        rt_mean=total.request_duration.mean,
        rt_p50=total.request_duration.quantile(0.50),
        rt_p99=total.request_duration.quantile(0.99),
        queue_mean=total.queue_duration.mean,
        compute_mean=total.compute_duration.mean,
        batch_size_mean=total.batch_size.mean,
        batches={k: round(v) for k, v in sorted(total.batches.items())},
    )
