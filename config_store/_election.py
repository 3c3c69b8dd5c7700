"""Leader election over instance registrations, the same on every backend.

Each candidate registers itself as an instance of the election's service (ZooKeeper: an ephemeral
node; SQLite: a lease) with the time it entered; the leader is the candidate that entered first
(ties broken by id). Every candidate watches the registrations and recomputes, so when the leader's
session or lease ends the next one takes over within the session timeout or lease TTL.

A candidate that is not connected to the store never thinks it leads: its registration may already
be gone and another candidate may lead. Two candidates can still both act for a moment (a leader
cut off has not noticed yet), so what a leader does must be fenced by compare-and-swap writes.

```python
election = LeaderElection(store, "autoai-control", "127.0.0.1", 8080, on_change=print)
election.is_leader   # True / False
election.close()
```
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from ._store import ConfigStore
from ._types import Instance

__all__ = ["LeaderElection"]


def _order(instance: Instance) -> tuple[float, str]:
    since = instance.payload.get("since")
    return (float(since) if isinstance(since, int | float) else float("inf"), instance.id)


class LeaderElection:
    """Take part in electing one leader among the candidates registered under ``service``.

    Args:
        store: the shared store.
        service: the election's name (an instance service name).
        host, port: this candidate's address (unique among the candidates; a replica's API).
        payload: extra fields shown to the others (``since`` and ``candidate`` are added).
        on_change: called with ``True`` / ``False`` when this candidate gains or loses the lead
            (on the store's delivery thread: keep it short).
    """

    def __init__(
        self,
        store: ConfigStore,
        service: str,
        host: str,
        port: int,
        payload: Mapping[str, Any] | None = None,
        on_change: Callable[[bool], None] | None = None,
    ):
        self.store = store
        self.service = service
        self.candidate = uuid.uuid4().hex[:12]
        self._on_change = on_change
        self._lock = threading.Lock()
        self._view: list[Instance] = []
        self._leading = False
        fields = {**(payload or {}), "since": time.time(), "candidate": self.candidate}
        self._registration = store.register(service, host, port, fields)
        self.id = self._registration.instance.id
        self._watch = store.watch_instances(service, self._update)

    def _update(self, instances: list[Instance]) -> None:
        view = sorted(instances, key=_order)
        leader = view[0] if view else None
        with self._lock:
            self._view = view
            leading = leader is not None and leader.payload.get("candidate") == self.candidate
            changed = leading != self._leading
            self._leading = leading
        if changed and self._on_change is not None:
            self._on_change(leading)

    @property
    def is_leader(self) -> bool:
        """Whether this candidate leads: first in the last view, and connected now."""
        with self._lock:
            leading = self._leading
        return leading and self.store.state == "connected"

    @property
    def leader(self) -> Instance | None:
        """The leading candidate in the last view (None before the first one arrived)."""
        with self._lock:
            return self._view[0] if self._view else None

    def candidates(self) -> list[Instance]:
        """Every registered candidate in the last view the watch delivered, the leader first."""
        with self._lock:
            return list(self._view)

    def close(self) -> None:
        """Leave the election (the next candidate takes over at once). Idempotent."""
        self._watch.cancel()
        self._registration.close()
        with self._lock:
            was, self._leading = self._leading, False
        if was and self._on_change is not None:
            self._on_change(False)
