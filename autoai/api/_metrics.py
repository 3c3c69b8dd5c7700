"""The control plane's Prometheus metrics (prefix ``autoai_``), on a registry of the app's own.

Counters and histograms are fed by events: a deploy job ended (``JobRunner``'s ``on_finish``), a
publish or rollback returned (``ControlMetrics.publishing``). Gauges are read at scrape time from
the job runner and the deployments, so they are never stale and need no bookkeeping:

| metric                            | type      | labels                               |
|-----------------------------------|-----------|--------------------------------------|
| autoai_deploys_total              | counter   | outcome: succeeded, failed           |
| autoai_deploy_duration_seconds    | histogram |                                      |
| autoai_publishes_total            | counter   | action: publish, rollback; outcome   |
| autoai_publish_duration_seconds   | histogram | action                               |
| autoai_jobs                       | gauge     | kind, state                          |
| autoai_instances                  | gauge     | model, version, processor, state     |
| autoai_deployments                | gauge     |                                      |
| autoai_store_up                   | gauge     |                                      |
| autoai_build_info                 | gauge     | version, insecure: true, false       |

Publish outcomes: ``published``; ``rejected`` (the control plane refused it: invalid, unknown, or
a stale ``expected_revision``); ``failed`` (anything else, such as the store being down).
"""

from __future__ import annotations

import importlib.metadata
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from config_store import StoreUnavailable

from ..errors import ControlPlaneError
from ..jobs import STATES, Job
from ..schema import Deployment, InstanceHealth

__all__ = [
    "DEPLOY_OUTCOMES",
    "INSTANCE_STATES",
    "PUBLISH_ACTIONS",
    "PUBLISH_OUTCOMES",
    "ControlMetrics",
    "instance_counts",
    "instance_state",
]

DEPLOY_OUTCOMES: Final = ("succeeded", "failed")
PUBLISH_ACTIONS: Final = ("publish", "rollback")
PUBLISH_OUTCOMES: Final = ("published", "rejected", "failed")
INSTANCE_STATES: Final = ("ready", "alive_not_ready", "dead")
JOB_KINDS: Final = ("deploy",)
_DEPLOY_BUCKETS: Final = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_PUBLISH_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

JobCounts = Callable[[], Mapping[tuple[str, str], int]]
Deployments = Callable[[], list[Deployment]]


def instance_state(instance: InstanceHealth) -> str:
    """``ready`` (registered in the store), ``alive_not_ready`` (its process runs but it is not
    registered: starting, or lost its session) or ``dead``."""
    if instance.ready:
        return "ready"
    return "alive_not_ready" if instance.alive else "dead"


def instance_counts(deployments: Iterable[Deployment]) -> dict[tuple[str, ...], int]:
    """Instances by ``(model, version, processor, state)``; every state of every deployment is
    present, zero included, so that an alert on ``dead > 0`` has a series to watch."""
    counts: dict[tuple[str, ...], int] = {}
    for deployment in deployments:
        key = (deployment.name, deployment.version, deployment.processor)
        states = Tally(instance_state(i) for i in deployment.instances)
        for state in INSTANCE_STATES:
            counts[(*key, state)] = counts.get((*key, state), 0) + states[state]
    return counts


def _version() -> str:
    try:
        return importlib.metadata.version("autoai")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class _StateCollector(Collector):
    """The scrape-time gauges: jobs, instances, deployments, store reachability."""

    def __init__(self, jobs: JobCounts, deployments: Deployments):
        self._jobs = jobs
        self._deployments = deployments

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily]:
        return {
            "jobs": GaugeMetricFamily(
                "autoai_jobs",
                "Jobs of this control plane by kind and state",
                labels=("kind", "state"),
            ),
            "instances": GaugeMetricFamily(
                "autoai_instances",
                "Instances of deployed versions by state: ready, alive_not_ready, dead",
                labels=("model", "version", "processor", "state"),
            ),
            "deployments": GaugeMetricFamily("autoai_deployments", "Deployed model versions"),
            "store_up": GaugeMetricFamily(
                "autoai_store_up", "1 when the last scrape could read the config store, else 0"
            ),
        }

    def describe(self) -> Iterator[Metric]:
        return iter(self._families().values())

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        counts = self._jobs()
        for kind in sorted(set(JOB_KINDS) | {kind for kind, _ in counts}):
            for state in STATES:
                families["jobs"].add_metric((kind, state), counts.get((kind, state), 0))
        yield families["jobs"]
        try:
            deployments = self._deployments()
        except (StoreUnavailable, ControlPlaneError):
            # no instance figures rather than wrong ones; store_up says why they are missing
            families["store_up"].add_metric((), 0)
            yield families["store_up"]
            return
        for labels, value in instance_counts(deployments).items():
            families["instances"].add_metric(labels, value)
        families["deployments"].add_metric((), len(deployments))
        families["store_up"].add_metric((), 1)
        yield from (families[name] for name in ("instances", "deployments", "store_up"))


class ControlMetrics:
    """The control plane's metrics on ``registry``.

    Args:
        registry: where they are registered (one per app; never the global registry).
        jobs: returns job counts by ``(kind, state)`` (``JobRunner.counts``), called per scrape.
        deployments: returns ``DeploymentService.list()``, called per scrape.
        version: the ``autoai_build_info`` version (default: the installed package's).
        insecure: its ``insecure`` label: the API listens beyond loopback without an admin token,
            as ``--insecure`` allowed.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        jobs: JobCounts,
        deployments: Deployments,
        version: str | None = None,
        insecure: bool = False,
    ):
        self.registry = registry
        self.deploys = Counter(
            "autoai_deploys", "Deploy jobs that ended, by outcome", ("outcome",), registry=registry
        )
        for outcome in DEPLOY_OUTCOMES:
            self.deploys.labels(outcome)
        self.deploy_duration = Histogram(
            "autoai_deploy_duration_seconds",
            "Time from a deploy's submission to its end, whatever the outcome",
            registry=registry,
            buckets=_DEPLOY_BUCKETS,
        )
        self.publishes = Counter(
            "autoai_publishes",
            "Publish and rollback requests by outcome: published, rejected, failed",
            ("action", "outcome"),
            registry=registry,
        )
        self.publish_duration = Histogram(
            "autoai_publish_duration_seconds",
            "Time to validate and write a route table (publish) or an earlier one (rollback)",
            ("action",),
            registry=registry,
            buckets=_PUBLISH_BUCKETS,
        )
        for action in PUBLISH_ACTIONS:
            self.publish_duration.labels(action)
            for outcome in PUBLISH_OUTCOMES:
                self.publishes.labels(action, outcome)
        build = Gauge(
            "autoai_build_info",
            "The running control plane's version, and whether it listens beyond loopback "
            "without an admin token (--insecure)",
            ("version", "insecure"),
            registry=registry,
        )
        build.labels(version or _version(), "true" if insecure else "false").set(1)
        registry.register(_StateCollector(jobs, deployments))

    def job_finished(self, job: Job) -> None:
        """``JobRunner``'s ``on_finish``: counts deploy outcomes and durations."""
        if job.kind != "deploy" or job.state not in DEPLOY_OUTCOMES:
            return
        self.deploys.labels(job.state).inc()
        self.deploy_duration.observe(max(0.0, (job.finished or time.time()) - job.created))

    @contextmanager
    def publishing(self, action: str) -> Iterator[None]:
        """Count and time the publish or rollback run inside; exceptions pass through."""
        start = time.perf_counter()
        outcome = "failed"
        try:
            yield
            outcome = "published"
        except ControlPlaneError:
            outcome = "rejected"
            raise
        finally:
            self.publishes.labels(action, outcome).inc()
            self.publish_duration.labels(action).observe(time.perf_counter() - start)
