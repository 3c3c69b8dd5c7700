"""Deploy / undeploy a version, its deployment, and jobs."""

from __future__ import annotations

from fastapi import APIRouter, Depends, status
from fastapi.concurrency import run_in_threadpool

from ...schema import Deployment, DeploymentList, DeploySpec, JobAccepted, JobInfo, ScaleRequest
from ..dependencies import Svc, require_read, require_write

router = APIRouter(prefix="/api/v1", tags=["deployments"])


@router.post(
    "/models/{name}/versions/{version}/deploy",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[Depends(require_write)],
)
async def deploy(name: str, version: str, svc: Svc, spec: DeploySpec) -> JobAccepted:
    """Deploy with an EAS-style spec (``processor`` or ``blade``, ``metadata.instance``,
    ``metadata.rpc.*``, ``token``; nested or dotted keys); poll ``/api/v1/jobs/{job}``."""
    job = await run_in_threadpool(svc.deployments.deploy, name, version, spec)
    return JobAccepted(job=job.id)


@router.get("/deployments", dependencies=[Depends(require_read)])
async def list_deployments(svc: Svc) -> DeploymentList:
    """Every deployment with its instances (pid, alive, ready) and endpoints."""
    return DeploymentList(deployments=await run_in_threadpool(svc.deployments.list))


@router.get("/models/{name}/versions/{version}/deployment", dependencies=[Depends(require_read)])
async def get_deployment(name: str, version: str, svc: Svc) -> Deployment:
    """A deployment with its instances' health and endpoints."""
    return await run_in_threadpool(svc.deployments.get, name, version)


@router.delete(
    "/models/{name}/versions/{version}/deploy",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[Depends(require_write)],
)
async def undeploy(name: str, version: str, svc: Svc, force: bool = False) -> None:
    """Drain and stop the instances; refused (409) while the published route table sends calls
    to this version, unless ``force=true``."""
    await run_in_threadpool(svc.deployments.undeploy, name, version, force=force)


@router.patch(
    "/models/{name}/versions/{version}/deployment",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[Depends(require_write)],
)
async def scale(name: str, version: str, svc: Svc, body: ScaleRequest) -> JobAccepted:
    """Scale to ``metadata.instance`` instances without dropping calls; poll the job. Only
    ``metadata.instance`` can change on a running deployment."""
    job = await run_in_threadpool(svc.deployments.scale, name, version, body.metadata.instance)
    return JobAccepted(job=job.id)


@router.get("/jobs/{job_id}", dependencies=[Depends(require_read)])
async def get_job(job_id: str, svc: Svc) -> JobInfo:
    """A job's state, progress, log, and its result or error."""
    return svc.jobs.get(job_id).info()
