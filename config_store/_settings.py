"""Settings of the ``autoai-store`` command (environment prefix ``AUTOAI_STORE_``).

Libraries take plain arguments (``open_store(url, ...)``); only entry points read the environment.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["StoreSettings", "default_store_url"]


def default_store_url() -> str:
    """The store every entry point uses when given none: the embedded one at
    ``~/.autoai/store.db`` (written here only; the control plane and ``autoai bench`` import it)."""
    return f"sqlite://{Path.home() / '.autoai' / 'store.db'}"


class StoreSettings(BaseSettings):
    """Where the store is and how a client keeps its local copies (frozen)."""

    model_config = SettingsConfigDict(env_prefix="AUTOAI_STORE_", frozen=True, extra="ignore")

    url: str = Field(default_factory=default_store_url)
    """Store URL: ``zk://host:port/chroot`` or ``sqlite:///path`` (default: ~/.autoai/store.db)."""
    snapshot_dir: Path | None = None
    """Local snapshot directory (default ``~/.autoai/snapshot``)."""
    failover_dir: Path | None = None
    """Operator override directory (default ``~/.autoai/failover``)."""
