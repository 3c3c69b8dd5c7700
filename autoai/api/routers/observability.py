"""``/metrics`` (Prometheus text) and ``/api/v1/sd/prometheus`` (Prometheus HTTP service discovery
of every registered instance of every deployment). Both are reads: open unless ``protect_reads``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from fastapi import APIRouter, Depends, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from config_store import Instance

from ...schema import Deployment, PoolRecord, TargetGroup
from ..dependencies import Services, Svc, require_read

router = APIRouter(tags=["observability"], dependencies=[Depends(require_read)])


def target_groups(
    deployments: Iterable[Deployment], instances: Mapping[str, Iterable[Instance]]
) -> list[TargetGroup]:
    """One Prometheus target group per deployment with registered instances.

    Args:
        deployments: ``DeploymentService.list()``.
        instances: the registered instances of each deployment's service.

    Returns:
        ``[{"targets": ["host:port", ...], "labels": {"model", "version", "processor",
        "service", "__metrics_path__"}}]``, the body Prometheus' ``http_sd_configs`` reads.
    """
    groups = []
    for deployment in deployments:
        if deployment.pooled is not None:
            continue  # scraped once per pool instance (``pool_groups``), not once per version
        service = deployment.service
        targets = sorted(
            f"[{i.host}]:{i.port}" if ":" in i.host else i.address
            for i in instances.get(service, ())
        )
        if not targets:
            continue
        labels = {
            "model": deployment.name,
            "version": deployment.version,
            "processor": deployment.processor,
            "service": service,
            "__metrics_path__": "/metrics",
        }
        groups.append(TargetGroup(targets=targets, labels=labels))
    return groups


def pool_groups(
    pools: Iterable[PoolRecord], instances: Mapping[str, Iterable[Instance]]
) -> list[TargetGroup]:
    """One target group per pool with registered instances, labelled ``pool``, ``service`` and
    ``processor="repository"``: a pool instance's ``/metrics`` labels every version it hosts
    with its model, version and processor itself."""
    groups = []
    for pool in pools:
        targets = sorted(
            f"[{i.host}]:{i.port}" if ":" in i.host else i.address
            for i in instances.get(pool.service, ())
        )
        if targets:
            labels = {
                "pool": pool.name,
                "processor": "repository",
                "service": pool.service,
                "__metrics_path__": "/metrics",
            }
            groups.append(TargetGroup(targets=targets, labels=labels))
    return groups


def _discover(svc: Services) -> list[TargetGroup]:
    deployments = svc.deployments.list()
    registered = {d.service: svc.store.instances(d.service) for d in deployments}
    pools = sorted((p for p, _ in svc.pools.records().values()), key=lambda p: p.name)
    members = {p.service: svc.store.instances(p.service) for p in pools}
    return target_groups(deployments, registered) + pool_groups(pools, members)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(svc: Svc) -> Response:
    """The control plane's metrics (``autoai_*``) in Prometheus' text format."""
    body = await run_in_threadpool(generate_latest, svc.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/api/v1/sd/prometheus")
async def prometheus_sd(svc: Svc) -> list[TargetGroup]:
    """Every registered model-server instance as Prometheus HTTP service discovery target groups
    (``http_sd_configs``), labelled with model, version, processor and service; a pool's
    instances as one group labelled with the pool."""
    return await run_in_threadpool(_discover, svc)
