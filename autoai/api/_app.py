"""``create_app``: the control plane's FastAPI application.

Services are built in the lifespan and reached by routes through ``Depends`` (tests override
them); routes parse, call a service and shape the answer. Domain errors become
``{"error": ..., "detail": ...}`` with the status of one table (``STATUS``); bad input is never
a 500.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

import config_store
from config_store import open_store

from ..errors import (
    Conflict,
    ControlPlaneError,
    Forbidden,
    InsufficientStorage,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
)
from ..schema import ErrorAnswer, Health
from ._limits import BodyLimit
from ._settings import ControlSettings
from .dependencies import Services, Svc

__all__ = ["ERROR_RESPONSES", "STATUS", "create_app"]

# The first class the error is an instance of gives the status: subclasses before their bases.
STATUS: Final[dict[type[ControlPlaneError], int]] = {
    PayloadTooLarge: 413,
    InvalidRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    Unavailable: 503,
    InsufficientStorage: 507,
}

# config_store errors that reach a route unconverted: the store's refusal of a name or a size is
# bad input (400), its absence a 503; any other store error stays a 500 (a bug, logged).
_STORE_ERRORS: Final[dict[type[config_store.ConfigStoreError], type[ControlPlaneError]]] = {
    config_store.StoreUnavailable: Unavailable,
    config_store.InvalidKey: InvalidRequest,
    config_store.ContentTooLarge: InvalidRequest,
    config_store.Conflict: Conflict,
    config_store.NotFound: NotFound,
}


# Every refusal has the same body; documented so that clients (and schemathesis) know its shape.
ERROR_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    code: {"model": ErrorAnswer, "description": what}
    for code, what in (
        (400, "Invalid request"),
        (401, "No admin token"),
        (403, "Not the admin token"),
        (404, "No such model, version, deployment or job"),
        (409, "Conflicts with the current state"),
        (413, "Body too large"),
        (422, "The body does not fit its schema"),
        (503, "The config store is unavailable; retry"),
        (507, "No room in the model repository"),
    )
}


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own refusals (no such route, wrong method, unparsable body) in our shape."""
    assert isinstance(exc, HTTPException)
    return JSONResponse(
        {"error": str(exc.detail), "detail": {}}, status_code=exc.status_code, headers=exc.headers
    )


def _answer(error: ControlPlaneError) -> JSONResponse:
    """A service error as its status (``STATUS``) and body; ``Retry-After`` on a 503."""
    status = next((s for cls, s in STATUS.items() if isinstance(error, cls)), 400)
    headers = {"Retry-After": "5"} if isinstance(error, Unavailable) else {}
    return JSONResponse(
        {"error": str(error), "detail": error.detail}, status_code=status, headers=headers
    )


async def _store_error(request: Request, exc: Exception) -> JSONResponse:
    """A ``config_store`` error below a route, converted once here (``_STORE_ERRORS``)."""
    ours = next(v for k, v in _STORE_ERRORS.items() if isinstance(exc, k))
    if ours is Unavailable:
        return _answer(Unavailable(f"the config store is unavailable: {exc}"))
    return _answer(ours(str(exc)))


def create_app(settings: ControlSettings | None = None) -> FastAPI:
    """The control plane's app; ``settings`` default to the ``AUTOAI_`` environment."""
    settings = settings or ControlSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = open_store(settings.store_url)
        try:
            svc = app.state.services = Services(settings, store)
            if settings.reconcile_interval > 0:
                svc.reconciler.start()
                if svc.sweeper is not None:
                    svc.sweeper.start()
            try:
                yield
            finally:
                svc.close()
        finally:
            store.close()

    app = FastAPI(
        title="AutoAI control plane",
        version="0.1.0",
        lifespan=lifespan,
        description="Register ONNX models, deploy them plain or blade-optimized, publish routes.",
    )

    @app.exception_handler(ControlPlaneError)
    async def domain_error(request: Request, exc: ControlPlaneError) -> JSONResponse:
        return _answer(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        ]
        return JSONResponse(
            {"error": "invalid request: " + "; ".join(problems), "detail": {"problems": problems}},
            status_code=422,
        )

    @app.get("/healthz")
    async def healthz(svc: Svc) -> Health:
        """Liveness, this replica's id, whether it leads (reconciles) and the store's state."""
        leader = svc.election.leader
        url = None if leader is None else leader.payload.get("url")
        return Health(
            status="ok",
            replica=svc.election.candidate,
            leader=svc.election.is_leader,
            leader_url=None if url is None else str(url),
            store=svc.store.state,
            reconcile_passes=svc.reconciler.passes,
        )

    from .routers import deployments, models, observability, pools, releases

    for store_error in _STORE_ERRORS:
        app.add_exception_handler(store_error, _store_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_middleware(BodyLimit)  # bodies capped before any route buffers them
    routers = (models, deployments, pools, releases, observability)
    for module in routers:
        app.include_router(module.router, responses=ERROR_RESPONSES)
    return app
