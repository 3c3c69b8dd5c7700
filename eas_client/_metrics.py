"""Client-side Prometheus metrics (prefix ``autoai_client_``): every family the SDKs export.

One :class:`ClientMetrics` defines all of them on a registry; ``EasClient`` observes calls, and the
routing SDK (``autoai.sdk``) and ``blade_client`` feed the route, shadow and fallback families.
Every family has the labels ``model``, ``version``, ``processor``, plus ``outcome``, ``reason`` or
``output`` where named:

| family | type | extra label |
|---|---|---|
| ``autoai_client_request_duration_seconds`` | Histogram, 0.5 ms .. 10 s | |
| ``autoai_client_requests_total`` | Counter | ``outcome``: ok error timeout unavailable invalid |
| ``autoai_client_retries_total`` | Counter | |
| ``autoai_client_route_revision`` | Gauge | |
| ``autoai_client_shadow_requests_total`` | Counter | ``outcome``: agree, disagree, error, dropped |
| ``autoai_client_shadow_agreement`` | Histogram of cosine similarity, buckets near 1 | |
| ``autoai_client_shadow_label_agreement_total`` | Counter (rows) | ``output``, ``outcome`` |
| ``autoai_client_fallbacks_total`` | Counter | ``reason`` (free text, few values) |

Nothing is registered at import time.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping
from typing import Final

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

__all__ = [
    "LABELS",
    "LABEL_OUTCOMES",
    "OUTCOMES",
    "SHADOW_OUTCOMES",
    "CallMetrics",
    "ClientMetrics",
]

LABELS: Final = ("model", "version", "processor")
OUTCOMES: Final = ("ok", "error", "timeout", "unavailable", "invalid")
SHADOW_OUTCOMES: Final = ("agree", "disagree", "error", "dropped")
LABEL_OUTCOMES: Final = ("agree", "disagree")

_DURATION_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5)
_DURATION_BUCKETS_ALL: Final = (*_DURATION_BUCKETS, 1.0, 2.5, 5.0, 10.0)
_AGREEMENT_BUCKETS: Final = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 1.0)

# The families already built on a registry: a second ClientMetrics on it shares them (registering
# a name twice would raise in prometheus_client).
_BUILT: weakref.WeakKeyDictionary[CollectorRegistry, ClientMetrics] = weakref.WeakKeyDictionary()
_BUILT_LOCK = threading.Lock()


class ClientMetrics:
    """All client-side metric families, on one registry.

    Creating several ``ClientMetrics`` on the same registry is fine: they share one set of
    families (the first one built), so clients of one process can each be given
    ``ClientMetrics()`` and still add up in one time series per label set.

    Args:
        registry: where to register (default ``prometheus_client.REGISTRY``).

    Attributes:
        registry: the registry.
        request_duration: seconds per call, retries included (Histogram).
        requests: calls by ``outcome`` (Counter).
        retries: retries made (Counter).
        route_revision: revision of the route table in use (Gauge).
        shadow_requests: shadow calls by ``outcome`` agree / disagree / error / dropped (Counter).
        shadow_agreement: cosine similarity of shadow and primary numeric outputs (Histogram).
        shadow_label_agreement: rows of shadow calls whose BYTES output (top label, or set of
            slot spans) agrees with the primary's, by ``output`` and ``outcome`` agree / disagree
            (Counter).
        fallbacks: calls served by a fallback route, by ``reason`` (Counter).

    Raises:
        ValueError: another collector already holds one of the names on ``registry``.
    """

    registry: CollectorRegistry
    request_duration: Histogram
    requests: Counter
    retries: Counter
    route_revision: Gauge
    shadow_requests: Counter
    shadow_agreement: Histogram
    shadow_label_agreement: Counter
    fallbacks: Counter

    def __init__(self, registry: CollectorRegistry | None = None):
        registry = REGISTRY if registry is None else registry
        with _BUILT_LOCK:
            first = _BUILT.get(registry)
            if first is None:
                self._build(registry)
                _BUILT[registry] = self
            else:
                self.__dict__.update(first.__dict__)

    def _build(self, registry: CollectorRegistry) -> None:
        labels = LABELS
        self.registry = registry
        self.request_duration = Histogram(
            "autoai_client_request_duration_seconds",
            "Time of an inference call seen by the client, retries included",
            labels,
            registry=registry,
            buckets=_DURATION_BUCKETS_ALL,
        )
        self.requests = Counter(
            "autoai_client_requests_total",
            "Inference calls by outcome (ok, error, timeout, unavailable, invalid)",
            (*labels, "outcome"),
            registry=registry,
        )
        self.retries = Counter(
            "autoai_client_retries_total",
            "Retries on another instance (connect errors, timeouts with time left, 503)",
            labels,
            registry=registry,
        )
        self.route_revision = Gauge(
            "autoai_client_route_revision",
            "Revision of the route table the client routes by",
            labels,
            registry=registry,
        )
        self.shadow_requests = Counter(
            "autoai_client_shadow_requests_total",
            "Shadow (mirrored) calls by outcome (agree, disagree, error, dropped)",
            (*labels, "outcome"),
            registry=registry,
        )
        self.shadow_agreement = Histogram(
            "autoai_client_shadow_agreement",
            "Cosine similarity between the shadow's and the primary's numeric outputs",
            labels,
            registry=registry,
            buckets=_AGREEMENT_BUCKETS,
        )
        # Rows, not calls: a batch of 32 texts with one label flipped is 31 agree + 1 disagree,
        # so agree / (agree + disagree) is the label agreement rate over the traffic.
        self.shadow_label_agreement = Counter(
            "autoai_client_shadow_label_agreement_total",
            "Rows of shadow calls whose BYTES output (top label, or set of slot spans) agrees "
            "with the primary's, by output and outcome (agree, disagree)",
            (*labels, "output", "outcome"),
            registry=registry,
        )
        self.fallbacks = Counter(
            "autoai_client_fallbacks_total",
            "Calls sent to a fallback route, by reason",
            (*labels, "reason"),
            registry=registry,
        )

    def bind(self, labels: Mapping[str, str]) -> CallMetrics:
        """The per-call series of one model/version/processor, resolved once (for hot paths).

        Args:
            labels: values of ``model``, ``version`` and ``processor`` (missing ones are ``""``).

        Raises:
            ValueError: ``labels`` has a key other than model, version, processor.
        """
        unknown = set(labels) - set(LABELS)
        if unknown:
            raise ValueError(
                f"metric labels must be among {list(LABELS)}, got unknown {sorted(unknown)}"
            )
        return CallMetrics(self, tuple(str(labels.get(name, "")) for name in LABELS))


class CallMetrics:
    """The call series of one label set; :meth:`observe` is what a client calls per call."""

    __slots__ = ("_duration", "_outcomes", "_retries", "values")

    def __init__(self, metrics: ClientMetrics, values: tuple[str, ...]):
        self.values = values
        """The model, version and processor label values."""
        self._duration = metrics.request_duration.labels(*values)
        self._retries = metrics.retries.labels(*values)
        self._outcomes = {o: metrics.requests.labels(*values, o) for o in OUTCOMES}

    def observe(self, outcome: str, seconds: float, retries: int) -> None:
        """Record one call.

        Args:
            outcome: one of ``OUTCOMES``.
            seconds: its duration, retries included.
            retries: how many retries it made.
        """
        self._duration.observe(seconds)
        self._outcomes[outcome].inc()
        if retries:
            self._retries.inc(retries)
