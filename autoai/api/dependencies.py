"""What the routes depend on: the services built once per app, and the token checks.

Routers import this module, never the app module (``_app.py`` includes the routers), so the API
has no import cycle.
"""

from __future__ import annotations

import hmac
import os
from typing import Annotated, Final

from fastapi import Depends, Request
from prometheus_client import CollectorRegistry

from config_store import ConfigStore, LeaderElection

from ..deployments import DeploymentService
from ..errors import Forbidden, Unauthorized
from ..jobs import JobRunner
from ..kubernetes import KubernetesOrchestrator, Sweeper, known_services
from ..operations import Operations
from ..orchestrators import LocalOrchestrator, Orchestrator
from ..pools import PoolService
from ..reconciler import Reconciler
from ..releases import ReleaseService
from ..repository import ModelRepository
from ._metrics import ControlMetrics
from ._settings import ControlSettings

__all__ = ["CONTROL_SERVICE", "Services", "Svc", "require_read", "require_write", "services"]

CONTROL_SERVICE: Final = "autoai-control"
"""The instance service control-plane replicas register under (and elect a leader in)."""


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
        self.pools = PoolService(
            store, self.orchestrator, Operations(store, self.election.candidate)
        )
        self.deployments = DeploymentService(
            store,
            self.repository,
            self.orchestrator,
            self.jobs,
            settings.repo_dir / "artifacts",
            replica=self.election.candidate,
            pools=self.pools,
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
            pools=self.pools,
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
        self.pools.close()


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


def require_write(request: Request, svc: Annotated[Services, Depends(services)]) -> None:
    """Every write needs the admin token (when one is configured)."""
    token = svc.settings.admin_token
    _check_token(request, None if token is None else token.get_secret_value())


def require_read(request: Request, svc: Annotated[Services, Depends(services)]) -> None:
    """Reads need it too when ``protect_reads`` is set."""
    if svc.settings.protect_reads:
        token = svc.settings.admin_token
        _check_token(request, None if token is None else token.get_secret_value())


Svc = Annotated[Services, Depends(services)]
"""A route's ``Services`` parameter."""
