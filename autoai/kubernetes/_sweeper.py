"""The leader's sweep: delete Deployments that no deployment record or running operation names.

A Deployment without a record is what a deploy cut short leaves (a control plane that died
between apply and record, a record write that lost its race); the sweep runs when this replica
becomes leader, then every ``interval`` seconds while it leads.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from config_store import ConfigStore, ConfigStoreError

from ..deployments import GROUP, read_record
from ..schema import OperationMarker, PoolRecord
from ._orchestrator import KubernetesError, KubernetesOrchestrator

__all__ = ["Sweeper", "known_services"]

log = logging.getLogger("autoai.kubernetes")
_RETRY_S = 10.0


def known_services(store: ConfigStore, live_replicas: set[str]) -> set[str]:
    """Services with a deployment or pool record, or an operation marker of a live replica
    (a pool's marker, ``operation.pool.<pool>``, names its service ``pool-<pool>``).

    Markers are read before records: a deploy writes its record before it removes its marker,
    so a service is never missed between the two reads."""
    known = set()
    for key in store.keys(GROUP):
        if key.startswith("operation."):
            item = store.get(key, group=GROUP)
            if (
                item is not None
                and OperationMarker.model_validate_json(item.content).replica in live_replicas
            ):
                known.add("-".join(key.removeprefix("operation.").rsplit(".", 1)))
    for key in store.keys(GROUP):  # listed again: a record written after the first listing
        if key.startswith("deployment."):
            item = store.get(key, group=GROUP)
            if item is not None:
                known.add(read_record(item.content).service)
        elif key.startswith("pool."):
            item = store.get(key, group=GROUP)
            if item is not None:
                known.add(PoolRecord.model_validate_json(item.content).service)
    return known


class Sweeper:
    """Runs ``orchestrator.reconcile`` when this replica becomes leader and every ``interval``
    seconds while it leads (0: only on becoming leader).

    Args:
        orchestrator: whose Deployments to sweep.
        known: the services to keep (called after the Deployments were listed).
        is_leader: whether this replica may act now.
        interval: seconds between sweeps while leading.
        tick: how often leadership is looked at.
    """

    def __init__(
        self,
        orchestrator: KubernetesOrchestrator,
        known: Callable[[], set[str]],
        is_leader: Callable[[], bool],
        interval: float = 60.0,
        tick: float = 1.0,
    ):
        self.orchestrator = orchestrator
        self.known = known
        self.is_leader = is_leader
        self.interval = interval
        self.tick = tick
        self.sweeps = 0
        self.removed: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kubernetes-sweeper", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def sweep(self) -> list[str]:
        """One sweep now; returns the Deployments deleted."""
        removed = self.orchestrator.reconcile(self.known)
        self.sweeps += 1
        self.removed.extend(removed)
        return removed

    def _run(self) -> None:
        due: float | None = None  # the next sweep while leading (None: not leading)
        while not self._stop.wait(self.tick):
            if not self.is_leader():
                due = None
                continue
            now = time.monotonic()
            if due is None:  # just became leader
                due = now
            if now < due:
                continue
            try:
                if removed := self.sweep():
                    log.info("swept deployments without a record: %s", removed)
                due = now + self.interval if self.interval > 0 else math.inf
            except (KubernetesError, ConfigStoreError) as exc:  # try again soon
                due = now + _RETRY_S
                log.warning("sweep skipped: %s", exc)
            except Exception:  # never let the loop die
                due = now + _RETRY_S
                log.exception("sweep failed")
