"""``open_store``: the one entry point that turns a URL into a backend and the store over it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Literal

from ._backend import Backend
from ._errors import InvalidUrl
from ._snapshot import default_failover_dir, default_snapshot_dir
from ._store import ConfigStore
from ._url import parse_url

__all__ = ["open_store"]


def _dir_option(
    value: str | Path | Literal[False] | None, url_value: str | None, default: Path
) -> Path | None:
    if value is False:
        return None
    if value is not None:
        return Path(value).expanduser()
    if url_value is not None:
        return Path(url_value).expanduser() if url_value else None
    return default


def open_store(
    url: str,
    *,
    snapshot_dir: str | Path | Literal[False] | None = None,
    failover_dir: str | Path | Literal[False] | None = None,
    history_keep: int | None = None,
    auth: tuple[str, str] | None = None,
    reader: tuple[str, str] | None = None,
) -> ConfigStore:
    """Open a configuration store.

    Args:
        url: ``zk://[user:password@]h1:p1,h2:p2/chroot[?options]`` or ``sqlite:///path/to/store.db``.
            ZooKeeper options: ``session_timeout``, ``connect_timeout``, ``write_timeout``
            (seconds), ``reader=user:password`` (the read-only identity granted READ on nodes
            this client creates). SQLite options: ``mode=ro``, ``lease_ttl`` (s),
            ``poll_interval_ms``. Both: ``snapshot_dir``, ``failover_dir`` (empty disables),
            ``history_keep``.
        snapshot_dir: local snapshot directory (default ``~/.autoai/snapshot``; False disables).
        failover_dir: operator override directory (default ``~/.autoai/failover``; False
            disables).
        history_keep: revisions kept per key (default 100).
        auth: this client's digest credential ``(user, password)``, instead of the URL's.
        reader: the read-only identity to grant READ, instead of ``?reader=`` in the URL.

    Returns:
        A connected store; a ZooKeeper store whose servers are unreachable still opens, serves
        the snapshot, and connects in the background.

    Raises:
        InvalidUrl: the URL or an option is malformed.
        StoreUnavailable: the SQLite file cannot be opened.
    """
    parsed = parse_url(url)
    if auth is not None:
        parsed = replace(parsed, username=auth[0], password=auth[1])
    if reader is not None:
        parsed = replace(parsed, options={**parsed.options, "reader": f"{reader[0]}:{reader[1]}"})
    if history_keep is None:
        history_keep = parsed.option_int("history_keep", 100)
    elif isinstance(history_keep, bool) or not isinstance(history_keep, int) or history_keep < 1:
        raise InvalidUrl(f"history_keep must be a positive integer, got {history_keep!r}")
    backend: Backend
    if parsed.scheme == "sqlite":
        from ._sqlite import SqliteBackend

        backend = SqliteBackend(parsed, history_keep=history_keep)
    else:
        from ._zk import ZkBackend

        backend = ZkBackend(parsed, history_keep=history_keep)
    return ConfigStore(
        backend,
        snapshot_dir=_dir_option(
            snapshot_dir, parsed.options.get("snapshot_dir"), default_snapshot_dir()
        ),
        failover_dir=_dir_option(
            failover_dir, parsed.options.get("failover_dir"), default_failover_dir()
        ),
    )
