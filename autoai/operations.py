"""The keys of the control group, and operation markers: one deploy, scale or undeploy at a
time per model version, one pool operation at a time per pool.

A marker is an ``OperationMarker`` under ``control/operation.<name>.<version>``, created by
compare-and-swap and naming the replica that runs the operation. A pool's marker is
``operation.pool.<pool>``: read as a service it is ``pool-<pool>``, the pool's own service, so the
reconciler leaves a pool alone while a live replica creates, fills or deletes it, exactly as it
leaves a version alone while it is deployed. A marker whose replica died is stale: the reconciler
removes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

from config_store import ConfigStore, Conflict as StoreConflict

from .errors import Conflict
from .schema import OperationMarker

__all__ = ["GROUP", "POOL_MARKER", "Operations", "deployment_key", "operation_key", "pool_key"]

GROUP: Final = "control"
"""The store group of the control plane's own documents (records, markers)."""
POOL_MARKER: Final = "pool"
"""The ``name`` of a pool's marker (``operation.pool.<pool>``)."""


def operation_key(name: str, version: str) -> str:
    """The marker of model ``name`` ``version`` (``POOL_MARKER``, ``pool``: of a pool)."""
    return f"operation.{name}.{version}"


def deployment_key(name: str, version: str) -> str:
    """Where a version's ``DeploymentRecord`` is."""
    return f"deployment.{name}.{version}"


def pool_key(pool: str) -> str:
    """Where a pool's ``PoolRecord`` is."""
    return f"pool.{pool}"


class Operations:
    """Takes and releases markers for one replica.

    Args:
        store: the shared store.
        replica: this control plane's candidate id in the leader election.
    """

    def __init__(self, store: ConfigStore, replica: str):
        self.store = store
        self.replica = replica

    def begin(self, name: str, version: str, what: str) -> int:
        """Take the marker; returns its revision.

        Raises:
            Conflict: another operation holds it (the message says which).
        """
        marker = OperationMarker(replica=self.replica, operation=what, started=time.time())
        try:
            return self.store.publish(
                operation_key(name, version), marker.model_dump_json().encode(), group=GROUP,
                expected_revision=0,
            )  # fmt: skip
        except StoreConflict:
            item = self.store.get(operation_key(name, version), group=GROUP)
            running = None if item is None else OperationMarker.model_validate_json(item.content)
            subject = f"pool {version!r}" if name == POOL_MARKER else (
                f"model {name!r} version {version!r}"
            )  # fmt: skip
            raise Conflict(
                f"{subject}: a {'previous' if running is None else running.operation} "
                "is still running; wait for its job",
                {
                    "name": name,
                    "version": version,
                    "running": {} if running is None else running.model_dump(mode="json"),
                },
            ) from None

    def wait_begin(
        self,
        name: str,
        version: str,
        what: str,
        *,
        timeout: float,
        on_wait: Callable[[str], None] | None = None,
        poll: float = 0.2,
    ) -> int:
        """``begin``, waiting up to ``timeout`` seconds while another operation holds the marker
        (a pool shared by deploys that run at once: each waits its turn).

        Raises:
            Conflict: still held after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        said = False
        while True:
            try:
                return self.begin(name, version, what)
            except Conflict as exc:
                if time.monotonic() > deadline:
                    raise
                if not said and on_wait is not None:
                    on_wait(f"waiting: {exc}")
                    said = True
            time.sleep(poll)

    def end(self, name: str, version: str, revision: int) -> None:
        """Release the marker (unless it was taken over meanwhile: this replica was thought
        dead)."""
        try:
            self.store.remove(operation_key(name, version), group=GROUP, expected_revision=revision)
        except StoreConflict:
            pass

    @contextmanager
    def held(self, name: str, version: str, revision: int) -> Iterator[None]:
        """Release the marker taken at ``revision`` when the block ends."""
        try:
            yield
        finally:
            self.end(name, version, revision)
