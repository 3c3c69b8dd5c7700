"""``/api/v1/models``: register (upload or URI; an ONNX file or a bundle), list, show, delete
versions."""

from __future__ import annotations

from typing import Any, Final

from fastapi import APIRouter, Depends, Request, status
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from ...errors import InvalidRequest
from ...repository import PARTS, ModelRepository, storage_error
from ...schema import ModelInfo, ModelList, ModelVersion, RegisterRequest
from ..dependencies import Svc, require_read, require_write

router = APIRouter(prefix="/api/v1/models", tags=["models"])

# The route reads its body itself (multipart or JSON): this documents both.
_BINARY: Final = {"type": "string", "format": "binary"}
_REGISTER_BODY: Final[dict[str, Any]] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "description": "name with file (an ONNX model, or a bundle archive: .tar.gz, "
                    ".tgz, .tar, .zip, files at its top level or in one folder), or name with "
                    "the bundle's parts: model, tokenizer, pipeline and (classify, slots) labels.",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "description": "The model."},
                        "file": {
                            **_BINARY,
                            "description": "The ONNX file, or a bundle archive.",
                        },
                        "model": {**_BINARY, "description": "A bundle's ONNX model."},
                        "tokenizer": {
                            **_BINARY,
                            "description": "A bundle's Hugging Face tokenizer.json.",
                        },
                        "labels": {
                            **_BINARY,
                            "description": "A bundle's label list, one per line (classify, slots).",
                        },
                        "pipeline": {
                            **_BINARY,
                            "description": "A bundle's pipeline.json (task, inputs, "
                            "max_length, ...).",
                        },
                    },
                    "oneOf": [
                        {"required": ["file"]},
                        {"required": ["model", "tokenizer", "pipeline"]},
                    ],
                }
            },
            "application/json": {"schema": RegisterRequest.model_json_schema()},
        },
    }
}
_FORM_FILES: Final = ("file", *PARTS)


async def _register_form(request: Request, repo: ModelRepository) -> ModelVersion:
    """Multipart: ``name`` + ``file`` (ONNX or archive), or ``name`` + the bundle's parts."""
    try:
        async with request.form() as form:  # closes the spooled upload files
            name = form.get("name")
            uploads = {k: form.get(k) for k in _FORM_FILES if form.get(k) is not None}
            if not isinstance(name, str) or not all(
                isinstance(u, UploadFile) for u in uploads.values()
            ):
                raise InvalidRequest(
                    "a multipart registration needs 'name' (text) and either 'file' (an ONNX "
                    "file or a bundle archive) or the files 'model', 'tokenizer', 'pipeline' "
                    "and (classify, slots) 'labels'"
                )
            parts = {
                k: (u.filename or k, await u.read())
                for k, u in uploads.items()
                if isinstance(u, UploadFile)
            }
    except OSError as exc:  # spooling the upload to the temporary directory failed
        raise storage_error(exc, "the upload (spooled to the temporary directory)") from exc
    if "file" in parts:
        if len(parts) > 1:
            raise InvalidRequest(
                f"give 'file' or the bundle's parts, not both (got {sorted(parts)})",
                {"fields": sorted(parts)},
            )
        source, data = parts["file"]
        return await run_in_threadpool(repo.register, name, data, source=source)
    if not parts:
        raise InvalidRequest(
            "a multipart registration needs 'file' (an ONNX file or a bundle archive) or the "
            "bundle's files 'model', 'tokenizer', 'pipeline' and (classify, slots) 'labels'"
        )
    return await run_in_threadpool(repo.register_parts, name, parts)


async def _register(request: Request, repo: ModelRepository) -> ModelVersion:
    """Multipart (``name`` + ``file``, or ``name`` + bundle parts) or JSON ``{"name", "uri"}``."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await _register_form(request, repo)
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
    return await run_in_threadpool(repo.register_uri, body.name, body.uri)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(require_write)],
    openapi_extra=_REGISTER_BODY,
)
async def register_model(request: Request, svc: Svc) -> ModelVersion:
    """Store an ONNX model or a bundle (model, tokenizer, labels, pipeline.json) by content and
    create its next version."""
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
