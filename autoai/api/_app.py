"""``create_app``: the control plane's FastAPI application.

Services are built in the lifespan and reached by routes through ``Depends`` (tests override
them); routes parse, call a service and shape the answer. Domain errors become
``{"error": ..., "detail": ...}`` with the status of one table (``STATUS``); bad input is never
a 500.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Final

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from config_store import ConfigStore, open_store

from ..deployments import DeploymentService
from ..errors import Conflict, ControlPlaneError, InvalidRequest, NotFound, Unauthorized
from ..jobs import JobRunner
from ..orchestrators import LocalOrchestrator
from ..releases import ReleaseService
from ..repository import ModelRepository
from ._settings import ControlSettings

__all__ = ["STATUS", "Services", "create_app", "require_read", "require_write", "services"]

STATUS: Final[dict[type[ControlPlaneError], int]] = {
    InvalidRequest: 400,
    Unauthorized: 401,
    NotFound: 404,
    Conflict: 409,
}


class Services:
    """What the routes use; built once per app."""

    def __init__(self, settings: ControlSettings, store: ConfigStore):
        self.settings = settings
        self.store = store
        self.jobs = JobRunner()
        self.deployments: DeploymentService
        self.repository = ModelRepository(
            settings.repo_dir, store, is_deployed=lambda n, v: self.deployments.is_deployed(n, v)
        )
        orchestrator = LocalOrchestrator(store, settings.store_url, settings.run_dir)
        self.deployments = DeploymentService(
            store, self.repository, orchestrator, self.jobs, settings.repo_dir / "artifacts"
        )
        self.releases = ReleaseService(store, self.repository, self.deployments)


def services(request: Request) -> Services:
    built: Services = request.app.state.services
    return built


def _check_token(request: Request, expected: str | None) -> None:
    if expected is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected.encode()):
        raise Unauthorized("this needs the admin token: Authorization: Bearer <token>")


def require_write(request: Request, svc: Annotated[Services, Depends(services)]) -> None:
    """Every write needs the admin token (when one is configured)."""
    _check_token(request, svc.settings.admin_token)


def require_read(request: Request, svc: Annotated[Services, Depends(services)]) -> None:
    """Reads need it too when ``protect_reads`` is set."""
    if svc.settings.protect_reads:
        _check_token(request, svc.settings.admin_token)


def create_app(settings: ControlSettings | None = None) -> FastAPI:
    """The control plane's app; ``settings`` default to the ``AUTOAI_`` environment."""
    settings = settings or ControlSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = open_store(settings.store_url)
        try:
            app.state.services = Services(settings, store)
            yield
        finally:
            app.state.services.jobs.wait(timeout=30)
            store.close()

    app = FastAPI(
        title="AutoAI control plane",
        version="0.1.0",
        lifespan=lifespan,
        description="Register ONNX models, deploy them plain or blade-optimized, publish routes.",
    )

    @app.exception_handler(ControlPlaneError)
    async def domain_error(request: Request, exc: ControlPlaneError) -> JSONResponse:
        status = next((s for cls, s in STATUS.items() if isinstance(exc, cls)), 400)
        return JSONResponse({"error": str(exc), "detail": exc.detail}, status_code=status)

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
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    from .routers import deployments, models, releases

    app.include_router(models.router)
    app.include_router(deployments.router)
    app.include_router(releases.router)
    return app
