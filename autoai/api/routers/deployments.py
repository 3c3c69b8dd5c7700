"""Deploy / undeploy a version, its deployment, and jobs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, status
from fastapi.concurrency import run_in_threadpool

from .._app import Services, require_read, require_write, services

router = APIRouter(prefix="/api/v1", tags=["deployments"])

Svc = Annotated[Services, Depends(services)]


@router.post(
    "/models/{name}/versions/{version}/deploy",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[Depends(require_write)],
)
async def deploy(
    name: str, version: str, svc: Svc, spec: Annotated[dict[str, Any], Body()]
) -> dict[str, Any]:
    """Deploy with an EAS-style spec (``processor`` or ``blade``, ``metadata.instance``,
    ``metadata.rpc.*``, ``token``); poll ``/api/v1/jobs/{job}``."""
    job = await run_in_threadpool(svc.deployments.deploy, name, version, spec)
    return {"job": job.id}


@router.get("/deployments", dependencies=[Depends(require_read)])
async def list_deployments(svc: Svc) -> dict[str, Any]:
    """Every deployment with its instances (pid, alive, ready) and endpoints."""
    return {"deployments": await run_in_threadpool(svc.deployments.list)}


@router.get("/models/{name}/versions/{version}/deployment", dependencies=[Depends(require_read)])
async def get_deployment(name: str, version: str, svc: Svc) -> dict[str, Any]:
    return await run_in_threadpool(svc.deployments.get, name, version)


@router.delete(
    "/models/{name}/versions/{version}/deploy",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[Depends(require_write)],
)
async def undeploy(name: str, version: str, svc: Svc) -> None:
    await run_in_threadpool(svc.deployments.undeploy, name, version)


@router.get("/jobs/{job_id}", dependencies=[Depends(require_read)])
async def get_job(job_id: str, svc: Svc) -> dict[str, Any]:
    return svc.jobs.get(job_id).json()
