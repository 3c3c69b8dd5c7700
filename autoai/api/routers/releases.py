"""Publish a model's route table, list its releases, roll back."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query
from fastapi.concurrency import run_in_threadpool

from ...errors import InvalidRequest
from ..dependencies import Svc, require_read, require_write

router = APIRouter(prefix="/api/v1/models/{name}", tags=["releases"])


@router.post("/publish", dependencies=[Depends(require_write)])
async def publish(
    name: str, svc: Svc, request: Annotated[dict[str, Any], Body()]
) -> dict[str, Any]:
    """``{"routes": [{"version", "weight"}], "sticky_key", "shadow", "expected_revision",
    "reason"}``: validated, then one compare-and-swap write of the route table."""
    with svc.metrics.publishing("publish"):
        return await run_in_threadpool(svc.releases.publish, name, request)


@router.get("/releases", dependencies=[Depends(require_read)])
async def releases(
    name: str, svc: Svc, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> dict[str, Any]:
    """Published revisions, newest first (at most ``limit``; the store keeps 100)."""
    return {"releases": await run_in_threadpool(svc.releases.releases, name, limit)}


@router.post("/rollback", dependencies=[Depends(require_write)])
async def rollback(
    name: str, svc: Svc, request: Annotated[dict[str, Any] | None, Body()] = None
) -> dict[str, Any]:
    """Republish an earlier revision (``{"revision": null}``: the previous one)."""
    with svc.metrics.publishing("rollback"):
        revision = (request or {}).get("revision")
        if revision is not None and (not isinstance(revision, int) or isinstance(revision, bool)):
            raise InvalidRequest(f"revision is {revision!r}, expected an integer or null")
        return {"revision": await run_in_threadpool(svc.releases.rollback, name, revision)}
