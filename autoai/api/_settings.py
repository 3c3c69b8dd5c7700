"""Settings of the control plane (``AUTOAI_`` environment variables, or arguments)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from config_store import default_store_url
from eas_server import is_loopback

from ..kubernetes import KubernetesSettings

__all__ = ["ControlSettings"]


def _home() -> Path:
    return Path.home() / ".autoai"


class ControlSettings(BaseSettings):
    """Where the control plane keeps its state and who may change it.

    Frozen: one object is shared by every service of the app; a variant is
    ``settings.model_copy(update={...})``.
    """

    model_config = SettingsConfigDict(
        env_prefix="AUTOAI_", extra="forbid", env_nested_delimiter="__", frozen=True
    )

    store_url: str = Field(default_factory=default_store_url)
    """The config store: ``zk://...`` or ``sqlite:///...`` (default: the embedded store at
    ``~/.autoai/store.db``, as ``autoai-store`` and ``autoai bench`` use)."""
    repo_dir: Path = Field(default_factory=lambda: _home() / "repo")
    """The model repository directory."""
    run_dir: Path = Field(default_factory=lambda: _home() / "run")
    """Service JSONs and logs of the instances the local orchestrator starts, one directory per
    store below it (``<run_dir>/<store identity>/``): control planes of different stores never
    share, overwrite or stop each other's instances."""
    host: str = "127.0.0.1"
    """Where the REST API listens (``autoai up --host``); advertised to the other replicas."""
    port: int = Field(default=8080, ge=1, le=65535)
    """The REST API's port (``autoai up --port``); with the host, this replica's id."""
    reconcile_interval: float = Field(default=1.0, ge=0)
    """Seconds between reconciliation passes of the leader (0: do not reconcile)."""
    restart_backoff_max: float = Field(default=60.0, gt=0)
    """The longest wait before restarting an instance that keeps crashing."""
    admin_token: SecretStr | None = None
    """Bearer token required on every write (None: writes are open, for a local demo); kept out
    of ``repr`` and dumps (``.get_secret_value()`` reads it)."""
    protect_reads: bool = False
    """Require the admin token on reads too."""
    insecure: bool = False
    """Listen beyond loopback without an admin token, writes open to anyone who can reach
    ``host`` (``autoai up --insecure``); without it such a start is refused."""
    orchestrator: Literal["local", "kubernetes"] = "local"
    """Where instances run: processes on this host, or Deployments in a Kubernetes cluster
    (``autoai up --orchestrator``; the ``[kubernetes]`` extra)."""
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)
    """The Kubernetes orchestrator's settings (``AUTOAI_KUBERNETES__NAMESPACE`` and so on)."""

    @property
    def exposed_without_token(self) -> bool:
        """Whether anyone who can reach ``host`` could deploy and publish: no admin token and
        ``host`` beyond loopback."""
        return self.admin_token is None and not is_loopback(self.host)

    @property
    def open_on_purpose(self) -> bool:
        """``exposed_without_token`` and allowed by ``insecure``: what the start-up warning and
        the build info's ``insecure`` label report."""
        return self.insecure and self.exposed_without_token
