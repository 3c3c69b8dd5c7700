"""What a control plane owns on its host: the processes and files of its own store.

Several control planes may run on one host, each with its own store (the demo beside a user's
own, two teams' stores, a staging store beside production). The local orchestrator scopes
everything it does to its store's *identity* (``ConfigStore.identity``: ``sqlite_<sha1 of the
database's real path>``, ``zk_<host>_<port>..._<chroot>``; one for every URL of one store):

- its files live in ``<run_dir>/<identity>/`` (``run_dir_for``), so two stores never write the
  same service JSON or log, even when both are pointed at one ``run_dir``;
- every service JSON it writes names the identity in its ``autoai_store`` field
  (``STORE_FIELD``; eas-server ignores top-level keys it does not use);
- a process is its own only when its ``--config`` lies in that directory *and* that JSON names
  the identity (``owner``): a process whose JSON is missing, unreadable or names another store is
  never adopted, restarted or stopped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

__all__ = ["STORE_FIELD", "owner", "run_dir_for"]

STORE_FIELD: Final = "autoai_store"
"""The service JSON's field naming the identity of the store whose control plane wrote it."""


def run_dir_for(base: str | Path, identity: str) -> Path:
    """Where the store ``identity``'s service JSONs and logs go: ``<base>/<identity>``
    (absolute)."""
    return Path(base).resolve() / identity


def owner(config: Path) -> str | None:
    """The store identity a service JSON names; None when the file is missing or unreadable, is
    not a JSON object, or names no store (written before stores were told apart, or by hand)."""
    try:
        doc = json.loads(config.read_bytes())
    except (OSError, ValueError, RecursionError):  # ValueError: bad JSON or bad UTF-8
        return None
    identity = doc.get(STORE_FIELD) if isinstance(doc, dict) else None
    return identity if isinstance(identity, str) and identity else None
