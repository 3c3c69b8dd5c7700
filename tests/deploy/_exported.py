"""The metrics our components really export, read from their own metric classes.

Each component's metrics object is built on a fresh ``CollectorRegistry`` (as the apps build
them); every labelled family is given one child so that it has samples; then the sample names
(``_total``, ``_bucket``, ``_sum``, ``_count``, ``_created`` included, as Prometheus stores them)
and their label names are read from ``registry.collect()``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from autoai.api._metrics import ControlMetrics
from autoai.schema import Deployment
from eas_client import ClientMetrics
from eas_server._metrics import ServerMetrics

__all__ = ["TARGET_LABELS", "exported"]

# Labels Prometheus puts on every series of a target: job and instance, plus what the two
# model-server jobs of deploy/prometheus/prometheus.yml add (service, and model/version/processor,
# which `up` gets from discovery).
TARGET_LABELS = frozenset({"job", "instance", "service", "model", "version", "processor"})


def _touch(objects: Iterable[Any]) -> None:
    """Give every labelled metric among the attributes of ``objects`` one child."""
    for obj in objects:
        for value in vars(obj).values():
            if (
                isinstance(value, MetricWrapperBase)
                and value._labelnames
                and not value._labelvalues
            ):
                value.labels(*("x" for _ in value._labelnames))


def _samples(registry: CollectorRegistry) -> dict[str, tuple[str, frozenset[str]]]:
    out: dict[str, tuple[str, frozenset[str]]] = {}
    for family in registry.collect():
        for sample in family.samples:
            labels = out.get(sample.name, (family.type, frozenset()))[1]
            out[sample.name] = (family.type, labels | frozenset(sample.labels))
    return out


def exported() -> dict[str, dict[str, tuple[str, frozenset[str]]]]:
    """Per component (``eas-server``, ``control plane``, ``sdk``): sample name -> (family type,
    label names)."""
    server = ServerMetrics(CollectorRegistry(), model="m", version="1", processor="onnx")
    deployment = Deployment(
        name="m",
        version="1",
        service="m-1",
        processor="onnx",
        model_sha256="0" * 64,
        created=0.0,
        instances=[],
        endpoints=[],
    )
    control = ControlMetrics(
        CollectorRegistry(), jobs=dict, deployments=lambda: [deployment], version="0"
    )
    client = ClientMetrics(CollectorRegistry())
    _touch([server, control, client])
    return {
        "eas-server": _samples(server.registry),
        "control plane": _samples(control.registry),
        "sdk": _samples(client.registry),
    }
