"""Publish a model's route table, list its releases, roll back.

Bodies and answers are ``autoai.schema`` models: a malformed body is a 422 naming the field before
the service runs, and the OpenAPI document lists every field.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query
from fastapi.concurrency import run_in_threadpool

from ...schema import PublishRequest, PublishResult, ReleaseList, RollbackRequest, RollbackResult
from ..dependencies import Svc, require_read, require_write

router = APIRouter(prefix="/api/v1/models/{name}", tags=["releases"])


@router.post("/publish", dependencies=[Depends(require_write)])
async def publish(name: str, svc: Svc, request: PublishRequest) -> PublishResult:
    """Check the routes against the deployments, then write the route table as the next revision
    (one compare-and-swap; ``expected_revision`` makes it conditional)."""
    with svc.metrics.publishing("publish"):
        return await run_in_threadpool(svc.releases.publish, name, request)


@router.get("/releases", dependencies=[Depends(require_read)])
async def releases(
    name: str, svc: Svc, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> ReleaseList:
    """Published revisions, newest first (at most ``limit``; the store keeps 100)."""
    return await run_in_threadpool(svc.releases.releases, name, limit)


@router.post("/rollback", dependencies=[Depends(require_write)])
async def rollback(
    name: str, svc: Svc, request: Annotated[RollbackRequest | None, Body()] = None
) -> RollbackResult:
    """Republish an earlier revision (no body, or ``{"revision": null}``: the previous one)."""
    with svc.metrics.publishing("rollback"):
        revision = None if request is None else request.revision
        return RollbackResult(
            revision=await run_in_threadpool(svc.releases.rollback, name, revision)
        )
