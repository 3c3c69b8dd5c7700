"""Deploy / undeploy a version, its deployment, and jobs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, StrictInt

from ...errors import InvalidRequest
from ..dependencies import Svc, require_read, require_write

router = APIRouter(prefix="/api/v1", tags=["deployments"])


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
async def undeploy(name: str, version: str, svc: Svc, force: bool = False) -> None:
    """Drain and stop the instances; refused (409) while the published route table sends calls
    to this version, unless ``force=true``."""
    await run_in_threadpool(svc.deployments.undeploy, name, version, force=force)


class ScaleRequest(BaseModel):
    """Only ``metadata.instance`` changes; other keys need a new deployment."""

    model_config = ConfigDict(extra="forbid")
    metadata: dict[str, StrictInt]


@router.patch(
    "/models/{name}/versions/{version}/deployment",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[Depends(require_write)],
)
async def scale(name: str, version: str, svc: Svc, body: ScaleRequest) -> dict[str, Any]:
    """Scale to ``metadata.instance`` instances without dropping calls; poll the job."""
    if set(body.metadata) != {"instance"}:
        raise InvalidRequest(
            "only metadata.instance can change on a running deployment, got "
            f"{sorted(body.metadata)}"
        )
    job = await run_in_threadpool(svc.deployments.scale, name, version, body.metadata["instance"])
    return {"job": job.id}


@router.get("/jobs/{job_id}", dependencies=[Depends(require_read)])
async def get_job(job_id: str, svc: Svc) -> dict[str, Any]:
    return svc.jobs.get(job_id).json()
