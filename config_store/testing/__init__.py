"""Test support: real ZooKeeper processes and fault injection (``expire_session``,
``drop_connection``). The pytest fixtures live in ``config_store.testing.plugin``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._zkserver import (
    ClientConnection,
    ZooKeeperEnsemble,
    ZooKeeperNotInstalled,
    ZooKeeperServer,
    four_letter_word,
    free_ports,
    parse_cons,
    parse_ephemerals,
    zookeeper_classpath,
)

if TYPE_CHECKING:
    from .._base import ConfigStore

__all__ = [
    "ClientConnection",
    "ZooKeeperEnsemble",
    "ZooKeeperNotInstalled",
    "ZooKeeperServer",
    "drop_connection",
    "expire_session",
    "four_letter_word",
    "free_ports",
    "parse_cons",
    "parse_ephemerals",
    "zookeeper_classpath",
]


def expire_session(store: ConfigStore, timeout: float = 15.0) -> None:
    """Expire a ZooKeeper store's session for real (the server deletes its ephemerals)."""
    from .._zk import expire_session as _expire

    _expire(store, timeout)  # type: ignore[arg-type]


def drop_connection(store: ConfigStore, timeout: float = 15.0) -> None:
    """Drop a ZooKeeper store's connection; the session survives."""
    from .._zk import drop_connection as _drop

    _drop(store, timeout)  # type: ignore[arg-type]
