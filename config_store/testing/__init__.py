"""Test support: real ZooKeeper processes (``ZooKeeperServer``, ``ZooKeeperEnsemble``) and faults
injected into a ZooKeeper store (``expire_session``, ``drop_connection``). The pytest fixtures
live in ``config_store.testing.plugin``."""

from __future__ import annotations

from ._faults import drop_connection, expire_session, session_id, zk_backend
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
    "session_id",
    "zk_backend",
    "zookeeper_classpath",
]
