"""Pools of shared multi-model instances: list, describe, resize, delete. A pool is created by the
first deploy that names it (``metadata.pool``); there is no create route."""

from __future__ import annotations

from fastapi import APIRouter, Depends, status
from fastapi.concurrency import run_in_threadpool

from ...schema import JobAccepted, Pool, PoolList, PoolScaleRequest
from ..dependencies import Svc, require_read, require_write

router = APIRouter(prefix="/api/v1", tags=["pools"])


@router.get("/pools", dependencies=[Depends(require_read)])
async def list_pools(svc: Svc) -> PoolList:
    """Every pool with its instances (pid, alive, ready) and the deployments on it."""
    return PoolList(pools=await run_in_threadpool(svc.pools.describe_all))


@router.get("/pools/{name}", dependencies=[Depends(require_read)])
async def get_pool(name: str, svc: Svc) -> Pool:
    """A pool with its instances' health and the deployments on it."""

    def describe() -> Pool:
        return svc.pools.describe(svc.pools.require(name))

    return await run_in_threadpool(describe)


@router.post(
    "/pools/{name}/scale",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[Depends(require_write)],
)
async def scale_pool(name: str, svc: Svc, body: PoolScaleRequest) -> JobAccepted:
    """Resize the pool to ``instances``; poll the job. Growing starts empty instances that
    placement and the repair pass use from then on; shrinking below the largest
    ``metadata.instance`` of a deployment on it is a 409, and the versions on the instances
    removed are loaded onto the others before those are drained and stopped."""
    job = await run_in_threadpool(svc.pools.scale, name, body.instances, svc.jobs)
    return JobAccepted(job=job.id)


@router.delete(
    "/pools/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[Depends(require_write)],
)
async def delete_pool(name: str, svc: Svc) -> None:
    """Stop the pool's instances (drained) and forget it; refused (409) while deployments are
    on it: undeploy them first."""
    await run_in_threadpool(svc.pools.delete, name)
