"""``/api/v1/models``: register (upload or URI), list, show, delete versions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, status
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from ...errors import InvalidRequest
from ...repository import ModelRepository, storage_error
from ..dependencies import Svc, require_read, require_write

router = APIRouter(prefix="/api/v1/models", tags=["models"])


async def _register(request: Request, repo: ModelRepository) -> dict[str, Any]:
    """Multipart (``name`` + ``file``) or JSON ``{"name", "uri"}``."""
    kind = request.headers.get("content-type", "")
    multipart = kind.startswith("multipart/form-data")
    if multipart:
        try:
            async with request.form() as form:  # closes the spooled upload files
                name, file = form.get("name"), form.get("file")
                if not isinstance(name, str) or not isinstance(file, UploadFile):
                    raise InvalidRequest(
                        "a multipart registration needs the fields 'name' (text) and 'file' "
                        "(the ONNX file)"
                    )
                data = await file.read()
                source = file.filename or "upload"
        except OSError as exc:  # spooling the upload to the temporary directory failed
            raise storage_error(exc, "the upload (spooled to the temporary directory)") from exc
        version = await run_in_threadpool(repo.register, name, data, source=source)
        return version.json()
    try:
        body = await request.json()
    except ValueError as exc:
        raise InvalidRequest(
            "expected multipart/form-data (name, file) or JSON {'name': ..., 'uri': ...}"
        ) from exc
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("uri"), str)
        or not isinstance(body.get("name"), str)
    ):
        raise InvalidRequest("a JSON registration needs 'name' and 'uri' (file://, http(s)://)")
    uri, name = body["uri"], body["name"]
    data = await run_in_threadpool(repo.read_uri, uri)
    version = await run_in_threadpool(repo.register, name, data, source=uri)
    return version.json()


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=[Depends(require_write)])
async def register_model(request: Request, svc: Svc) -> dict[str, Any]:
    """Store an ONNX model by content and create its next version."""
    return await _register(request, svc.repository)


@router.get("", dependencies=[Depends(require_read)])
async def list_models(svc: Svc) -> dict[str, Any]:
    models = await run_in_threadpool(svc.repository.models)
    return {"models": [m.json() for m in models]}


@router.get("/{name}", dependencies=[Depends(require_read)])
async def get_model(name: str, svc: Svc) -> dict[str, Any]:
    return (await run_in_threadpool(svc.repository.model, name)).json()


@router.get("/{name}/versions/{version}", dependencies=[Depends(require_read)])
async def get_version(name: str, version: str, svc: Svc) -> dict[str, Any]:
    return (await run_in_threadpool(svc.repository.version, name, version)).json()


@router.delete(
    "/{name}/versions/{version}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[Depends(require_write)],
)
async def delete_version(name: str, version: str, svc: Svc) -> None:
    await run_in_threadpool(svc.repository.delete, name, version)
