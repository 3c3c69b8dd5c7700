"""``/api/v1/models``: register (upload or URI), list, show, delete versions."""

from __future__ import annotations

from typing import Any, Final

from fastapi import APIRouter, Depends, Request, status
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from ...errors import InvalidRequest
from ...repository import ModelRepository, storage_error
from ...schema import ModelInfo, ModelList, ModelVersion, RegisterRequest
from ..dependencies import Svc, require_read, require_write

router = APIRouter(prefix="/api/v1/models", tags=["models"])

# The route reads its body itself (multipart or JSON): this documents both.
_REGISTER_BODY: Final[dict[str, Any]] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["name", "file"],
                    "properties": {
                        "name": {"type": "string", "description": "The model."},
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "The ONNX file.",
                        },
                    },
                }
            },
            "application/json": {"schema": RegisterRequest.model_json_schema()},
        },
    }
}


async def _register(request: Request, repo: ModelRepository) -> ModelVersion:
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
        return await run_in_threadpool(repo.register, name, data, source=source)
    try:
        body = RegisterRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise InvalidRequest(
                "expected multipart/form-data (name, file) or JSON {'name': ..., 'uri': ...}"
            ) from exc
        problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise InvalidRequest(
            "a JSON registration needs 'name' and 'uri' (file://, http(s)://)",
            {"problems": problems},
        ) from exc
    data = await run_in_threadpool(repo.read_uri, body.uri)
    return await run_in_threadpool(repo.register, body.name, data, source=body.uri)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(require_write)],
    openapi_extra=_REGISTER_BODY,
)
async def register_model(request: Request, svc: Svc) -> ModelVersion:
    """Store an ONNX model by content and create its next version."""
    return await _register(request, svc.repository)


@router.get("", dependencies=[Depends(require_read)])
async def list_models(svc: Svc) -> ModelList:
    """Every registered model with its versions, by name."""
    return ModelList(models=await run_in_threadpool(svc.repository.models))


@router.get("/{name}", dependencies=[Depends(require_read)])
async def get_model(name: str, svc: Svc) -> ModelInfo:
    """A model and its versions, oldest first."""
    return await run_in_threadpool(svc.repository.model, name)


@router.get("/{name}/versions/{version}", dependencies=[Depends(require_read)])
async def get_version(name: str, version: str, svc: Svc) -> ModelVersion:
    """One version: digest, size, signature, source."""
    return await run_in_threadpool(svc.repository.version, name, version)


@router.delete(
    "/{name}/versions/{version}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[Depends(require_write)],
)
async def delete_version(name: str, version: str, svc: Svc) -> None:
    """Forget a version (refused while it is deployed)."""
    await run_in_threadpool(svc.repository.delete, name, version)
