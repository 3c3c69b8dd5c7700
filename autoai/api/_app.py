"""``create_app``: the control plane's FastAPI application.

Services are built in the lifespan and reached by routes through ``Depends`` (tests override
them); routes parse, call a service and shape the answer. Domain errors become
``{"error": ..., "detail": ...}`` with the status of one table (``STATUS``); bad input is never
a 500.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Final

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException

import config_store
from config_store import ConfigStore, LeaderElection, open_store

from ..deployments import DeploymentService
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
from ..jobs import JobRunner
from ..kubernetes import KubernetesOrchestrator, Sweeper, known_services
from ..orchestrators import LocalOrchestrator, Orchestrator
from ..reconciler import Reconciler
from ..releases import ReleaseService
from ..repository import ModelRepository
from ._limits import BodyLimit
from ._metrics import ControlMetrics
from ._settings import ControlSettings

CONTROL_SERVICE: Final = "autoai-control"
"""The instance service control-plane replicas register under (and elect a leader in)."""

__all__ = [
    "CONTROL_SERVICE",
    "STATUS",
    "Services",
    "create_app",
    "require_read",
    "require_write",
    "services",
]

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


class Services:
    """What the routes use; built once per app."""

    def __init__(self, settings: ControlSettings, store: ConfigStore):
        self.settings = settings
        self.store = store
        self.metrics = ControlMetrics(
            CollectorRegistry(),
            jobs=lambda: self.jobs.counts(),
            deployments=lambda: self.deployments.list(),
            insecure=settings.open_on_purpose,
        )
        self.jobs = JobRunner(on_finish=self.metrics.job_finished)
        self.deployments: DeploymentService
        self.repository = ModelRepository(
            settings.repo_dir, store, is_deployed=lambda n, v: self.deployments.is_deployed(n, v)
        )
        self.local = LocalOrchestrator(store, settings.store_url, settings.run_dir)
        self.kubernetes: KubernetesOrchestrator | None = None
        if settings.orchestrator == "kubernetes":  # imports the client: the [kubernetes] extra
            self.kubernetes = KubernetesOrchestrator(store, settings.kubernetes, settings.repo_dir)
        self.orchestrator: Orchestrator = self.kubernetes or self.local
        self.election = LeaderElection(
            store,
            CONTROL_SERVICE,
            settings.host,
            settings.port,
            {"pid": os.getpid(), "url": f"http://{settings.host}:{settings.port}"},
        )
        self.deployments = DeploymentService(
            store,
            self.repository,
            self.orchestrator,
            self.jobs,
            settings.repo_dir / "artifacts",
            replica=self.election.candidate,
        )
        self.releases = ReleaseService(store, self.repository, self.deployments)
        # Local records only; it also clears stale operation markers, whatever the orchestrator.
        self.reconciler = Reconciler(
            store,
            self.local,
            is_leader=lambda: self.election.is_leader,
            live_replicas=self._live_replicas,
            interval=settings.reconcile_interval,
            backoff_max=settings.restart_backoff_max,
        )
        self.sweeper: Sweeper | None = None
        if self.kubernetes is not None:  # Deployments no record names
            self.sweeper = Sweeper(
                self.kubernetes,
                known=lambda: known_services(store, self._live_replicas()),
                is_leader=lambda: self.election.is_leader,
                interval=settings.kubernetes.sweep_interval,
            )

    def _live_replicas(self) -> set[str]:
        return {str(c.payload.get("candidate")) for c in self.election.candidates()}

    def close(self) -> None:
        """Stop reconciling and leave the election; the instances keep running."""
        self.reconciler.close()
        if self.sweeper is not None:
            self.sweeper.close()
        self.jobs.wait(timeout=30)
        self.election.close()


def services(request: Request) -> Services:
    built: Services = request.app.state.services
    return built


def _check_token(request: Request, expected: str | None) -> None:
    """Raises: Unauthorized: no bearer token (401). Forbidden: another token (403)."""
    if expected is None:
        return
    scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("this needs the admin token: Authorization: Bearer <token>")
    # compared as bytes: compare_digest refuses non-ASCII str, which a header may carry
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise Forbidden("the token is not the admin token")


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
    async def healthz(svc: Annotated[Services, Depends(services)]) -> dict[str, Any]:
        """Liveness, this replica's id, whether it leads (reconciles) and the store's state."""
        leader = svc.election.leader
        return {
            "status": "ok",
            "replica": svc.election.candidate,
            "leader": svc.election.is_leader,
            "leader_url": None if leader is None else leader.payload.get("url"),
            "store": svc.store.state,
            "reconcile_passes": svc.reconciler.passes,
        }

    from .routers import deployments, models, observability, releases

    for store_error in _STORE_ERRORS:
        app.add_exception_handler(store_error, _store_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_middleware(BodyLimit)  # bodies capped before any route buffers them
    app.include_router(models.router)
    app.include_router(deployments.router)
    app.include_router(releases.router)
    app.include_router(observability.router)
    return app
