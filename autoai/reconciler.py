"""Reconciliation: make the instances running on this host match the deployment records.

The leader among the control-plane replicas (``config_store.LeaderElection``) runs a pass every
``interval`` seconds:

- a recorded instance whose process runs is adopted as it is (a restarted control plane starts
  nothing twice);
- a recorded instance whose process is gone is restarted, with exponential backoff for an instance
  that keeps crashing (1, 2, 4 ... ``backoff_max`` seconds; an instance that ran for
  ``stable_after`` seconds starts over at no delay), and the record is updated by
  compare-and-swap (a replica that lost the race stops what it started);
- a process this orchestrator started that no record names is an orphan (a deploy cut short by a
  crash, a restart whose record write lost) and is stopped, unless a live replica's operation on
  that version is still running; "started by this orchestrator" means its service JSON lies in
  this store's run directory and names this store (``autoai.ownership``), so the instances of
  another control plane on the host, with another store, are never taken for orphans;
- an operation marker whose replica is no longer a candidate is stale and removed;
- pools (``autoai.pools``): their instances are adopted and restarted as a deployment's are
  (a restarted one comes back empty), and, before that, every pooled deployment that lost an
  instance is loaded onto other live instances of its pool so it keeps its instance count
  (``autoai.pool_repair``: the only part that talks HTTP, to the pool instances' repository
  API; it runs whatever the orchestrator, as Kubernetes restarts pods itself).

``pass_once`` returns what it did, for logs and tests.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from config_store import ConfigStore, ConfigStoreError, Conflict as StoreConflict

from .deployments import GROUP, read_record
from .orchestrators import InstanceRecord, LocalOrchestrator, StartFailed
from .pool_repair import PoolRepair
from .pools import PoolService
from .schema import DeploymentRecord, LocalInstance, OperationMarker, PoolRecord

__all__ = ["PassReport", "Reconciler"]

log = logging.getLogger("autoai.reconciler")


@dataclass
class PassReport:
    """What one pass found and did."""

    adopted: int = 0
    restarted: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    orphans: list[int] = field(default_factory=list)
    stale_markers: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)
    """Pooled deployments loaded onto other pool instances (``service: lost [...], added
    [...]``)."""
    unloaded: list[str] = field(default_factory=list)
    """Versions unloaded from pool instances (``service@host:port``): no deployment names them,
    or one more instance than asked hosts them."""

    def busy(self) -> bool:
        return bool(
            self.restarted or self.failed or self.orphans or self.stale_markers or self.moved
            or self.unloaded
        )  # fmt: skip


class Reconciler:
    """Runs reconciliation passes while this replica leads.

    Args:
        store: the shared store.
        orchestrator: starts, finds and stops the processes.
        is_leader: whether this replica may act now.
        live_replicas: the candidate ids of the replicas alive now (operation markers name them).
        interval: seconds between passes.
        backoff_max: the longest wait before restarting an instance that keeps crashing.
        stable_after: an instance that ran this long before it died restarts at once.
        pools: repairs pooled deployments (None: pools are left alone).
    """

    def __init__(
        self,
        store: ConfigStore,
        orchestrator: LocalOrchestrator,
        *,
        is_leader: Callable[[], bool],
        live_replicas: Callable[[], set[str]],
        interval: float = 1.0,
        backoff_max: float = 60.0,
        stable_after: float = 60.0,
        pools: PoolService | None = None,
    ):
        self.store = store
        self.orchestrator = orchestrator
        self.is_leader = is_leader
        self.live_replicas = live_replicas
        self.interval = interval
        self.backoff_max = backoff_max
        self.stable_after = stable_after
        self.repair = None if pools is None else PoolRepair(pools)
        self.host = socket.gethostname()
        self.passes = 0
        self.last: PassReport | None = None
        # Backoff, in memory (a new leader starts afresh): quick crashes in a row per slot
        # (service, index), and when each dead process (service, pid) was first seen dead.
        self._streak: dict[tuple[str, int], int] = {}
        self._dead_since: dict[tuple[str, int], float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.is_leader():
                continue
            try:
                self.last = report = self.pass_once()
                self.passes += 1
                if report.busy():
                    log.info("reconciled: %s", report)
            except ConfigStoreError as exc:  # store down: try again next pass
                log.warning("reconciliation skipped: %s", exc)
            except Exception:  # never let the loop die
                log.exception("reconciliation pass failed")

    def pass_once(self) -> PassReport:
        """One pass. Reads processes first, then markers, then records: a process started by an
        operation is visible only after its marker, and a marker is removed only after the
        record naming the process was written, so no pass takes a starting instance for an
        orphan."""
        report = PassReport()
        processes = self.orchestrator.processes()
        keys = self.store.keys(GROUP)
        busy = self._markers(keys, report)
        records: dict[str, tuple[DeploymentRecord | PoolRecord, int]] = {}
        for key in keys:
            if key.startswith(("deployment.", "pool.")):
                item = self.store.get(key, group=GROUP)
                if item is not None:
                    record = (
                        read_record(item.content)
                        if key.startswith("deployment.")
                        else PoolRecord.model_validate_json(item.content)
                    )
                    records[key] = (record, item.revision)
        if self.repair is not None and self.is_leader():
            # before restarts: what a dead pool instance hosted is loaded onto the live ones now,
            # not after its replacement (empty) is up
            try:
                repaired = self.repair(busy, self.is_leader)
            except ConfigStoreError:
                raise  # the whole pass waits for the store
            except Exception as exc:  # restarts below must not depend on the pools' repair
                log.exception("pool repair failed")
                report.failed.append(f"pool repair: {type(exc).__name__}: {exc}")
            else:
                report.moved += repaired.moved
                report.unloaded += repaired.unloaded
                report.failed += repaired.failed
        recorded: set[int] = set()
        for key, (record, revision) in records.items():
            if record.orchestrator != "local":
                continue  # another orchestrator's deployment: not processes of this host
            recorded.update(i.pid for i in record.instances if isinstance(i, LocalInstance))
            if record.service in busy:
                continue
            self._reconcile_record(key, record, revision, report)
        for pid, service in processes.items():
            if pid not in recorded and service not in busy and self.is_leader():
                log.warning("stopping orphan instance pid %d of %s", pid, service)
                self.orchestrator.stop([InstanceRecord(pid=pid)], timeout=10)
                report.orphans.append(pid)
        return report

    def _markers(self, keys: list[str], report: PassReport) -> set[str]:
        """Services with a running operation of a live replica; stale markers are removed."""
        live = self.live_replicas()
        busy = set()
        for key in keys:
            if not key.startswith("operation."):
                continue
            item = self.store.get(key, group=GROUP)
            if item is None:
                continue
            marker = OperationMarker.model_validate_json(item.content)
            service = "-".join(key.removeprefix("operation.").rsplit(".", 1))
            if marker.replica in live:
                busy.add(service)
                continue
            try:
                self.store.remove(key, group=GROUP, expected_revision=item.revision)
                report.stale_markers.append(key)
            except StoreConflict:
                busy.add(service)  # renewed meanwhile: leave it to the next pass
        return busy

    def _reconcile_record(
        self, key: str, record: DeploymentRecord | PoolRecord, revision: int, report: PassReport
    ) -> None:
        service = record.service
        for index, instance in enumerate(record.instances):
            if not isinstance(instance, LocalInstance):
                continue  # a replica of another orchestrator
            if instance.host not in ("", self.host):
                continue  # another host's orchestrator owns it
            if self.orchestrator.running(instance):
                report.adopted += 1
                self._dead_since.pop((service, instance.pid), None)
                if time.time() - instance.started >= self.stable_after:
                    self._streak.pop((service, index), None)
                continue
            dead_since = self._dead_since.setdefault((service, instance.pid), time.monotonic())
            if time.time() - instance.started >= self.stable_after + (
                time.monotonic() - dead_since
            ):
                self._streak.pop((service, index), None)  # it ran long enough: no backoff
            streak = self._streak.get((service, index), 0)
            if time.monotonic() < dead_since + self.delay(streak) or not self.is_leader():
                report.waiting.append(f"{service}#{index}")
                continue
            self._restart(key, record, revision, index, instance, report)
            return  # the record changed: the next pass sees its new revision

    def delay(self, streak: int) -> float:
        """Seconds to wait before a restart after ``streak`` quick crashes in a row."""
        return 0.0 if streak == 0 else min(self.backoff_max, 2.0 ** (streak - 1))

    def _restart(
        self,
        key: str,
        record: DeploymentRecord | PoolRecord,
        revision: int,
        index: int,
        dead: InstanceRecord,
        report: PassReport,
    ) -> None:
        service = record.service
        fixed_port = isinstance(record, DeploymentRecord) and bool(record.spec.metadata.port)
        log.warning("instance pid %d of %s is gone; restarting it", dead.pid, service)
        streak = self._streak[(service, index)] = self._streak.get((service, index), 0) + 1
        try:
            (fresh,) = self.orchestrator.spawn(
                service, 1, first_port=dead.port if fixed_port else 0, restarts=dead.restarts + 1
            )
        except StartFailed as exc:
            self._dead_since[(service, dead.pid)] = time.monotonic()
            report.failed.append(f"{service}#{index}: {exc}")
            log.warning("restart of %s#%d failed (%s); next try in %.0f s",
                        service, index, exc, self.delay(streak))  # fmt: skip
            return
        instances = list(record.instances)
        instances[index] = fresh
        updated = record.model_copy(update={"instances": instances})
        try:
            self.store.publish(
                key,
                updated.model_dump_json().encode(),
                group=GROUP,
                expected_revision=revision,
            )
        except (StoreConflict, ConfigStoreError):
            self.orchestrator.stop([fresh], timeout=10)
            raise
        self._dead_since.pop((service, dead.pid), None)
        report.restarted.append(f"{service}#{index}: pid {dead.pid} -> {fresh.pid}")
