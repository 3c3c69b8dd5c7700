"""Repairing pooled deployments: the reconciler's part for pools (``autoai.pools``).

On every pass of the leader, for every pool no live replica is working on: its live instances
(process or pod running, registered) are asked what they host (``GET /v2/resources``); each
pooled deployment not being changed is loaded onto other live instances until it is on as many
as ``metadata.instance`` asked for (or as many as are live: the rest follows when a restarted
instance is back, empty), chosen by ``autoai.placement``; one more instance than asked hosting it
(an instance that came back after its versions were loaded elsewhere) unloads it; its record is
rewritten by compare-and-swap with what moved (``PooledPlacement.moves``). A version that no
deployment names (what a deploy cut short leaves) is unloaded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from config_store import ConfigStoreError, Conflict as StoreConflict

from .errors import InvalidRequest
from .operations import GROUP, deployment_key
from .placement import NoRoom, choose, rank
from .pool_client import MemberUnreachable
from .pools import MOVES_KEPT, PoolService
from .schema import DeploymentRecord, HostedModel, MemberResources, PoolMove, PoolRecord

__all__ = ["PoolRepair", "RepairReport"]

log = logging.getLogger("autoai.pools")


@dataclass
class RepairReport:
    """What one repair pass did: versions moved, versions unloaded, failures."""

    moved: list[str] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class PoolRepair:
    """One repair pass when called (``repair(busy, is_leader)``).

    Args:
        pools: the pools, their instances and their repository API.
    """

    def __init__(self, pools: PoolService):
        self.pools = pools

    def __call__(self, busy: set[str], is_leader: Callable[[], bool]) -> RepairReport:
        """One pass over every pool not busy: each pooled deployment not busy is loaded onto
        live instances until it is on as many as it asked for (or as many as are live), its
        record updated by compare-and-swap with what moved; versions no deployment names are
        unloaded. ``busy``: services with a running operation of a live replica."""
        report = RepairReport()
        for pool, _ in self.pools.records().values():
            if pool.service in busy or pool.orchestrator != self.pools.orchestrator.kind:
                continue
            if not is_leader():
                break
            try:
                self._repair_pool(pool, busy, report)
            except (MemberUnreachable, ConfigStoreError) as exc:
                report.failed.append(f"{pool.service}: {exc}")
        return report

    def _repair_pool(self, pool: PoolRecord, busy: set[str], report: RepairReport) -> None:
        token = self.pools.token(pool)
        members = self.pools.resources(self.pools.members(pool), token)
        deployments = self.pools.deployments_on(pool.name)
        known = {(r.name, r.version) for r, _ in deployments.values()}
        for _, (record, revision) in sorted(deployments.items()):
            if record.service not in busy:
                self._repair_deployment(pool, token, members, record, revision, report)
        for address, resources in members.items():
            for model in resources.models:
                service = f"{model.name}-{model.version}"
                if (model.name, model.version) in known or service in busy:
                    continue
                if model.state == "READY":
                    log.warning("unloading %s from %s: no deployment names it", service, address)
                    if self.pools.client.unload(address, token, model.name, model.version):
                        report.unloaded.append(f"{service}@{address}")

    def _repair_deployment(
        self,
        pool: PoolRecord,
        token: str | None,
        members: dict[str, MemberResources],
        record: DeploymentRecord,
        revision: int,
        report: RepairReport,
    ) -> None:
        placed = record.pooled
        assert placed is not None
        name, version = record.name, record.version
        hosting = sorted(a for a, r in members.items() if r.hosts(name, version))
        wanted = min(record.spec.metadata.instance, len(members))
        added: list[str] = []
        if len(hosting) < wanted:
            candidates = {a: r for a, r in members.items() if a not in hosting}
            need = wanted - len(hosting)
            try:
                chosen = choose(candidates, model_bytes=placed.model_bytes, count=need)
            except NoRoom as exc:  # as many as have room
                report.failed.append(f"{record.service}: {exc}")
                ranked = rank(candidates, model_bytes=placed.model_bytes)
                chosen = [c.address for c in ranked if c.fits][:need]
            for address in chosen:
                try:
                    self.pools.client.load(address, token, name, placed.config)
                except (MemberUnreachable, InvalidRequest) as exc:
                    report.failed.append(f"{record.service}@{address}: {exc}")
                    continue
                added.append(address)
                loaded = HostedModel(name=name, version=version, state="READY",
                                     memory_bytes=placed.model_bytes)  # fmt: skip
                members[address] = members[address].model_copy(
                    update={"models": [*members[address].models, loaded]}
                )
        asked = record.spec.metadata.instance
        if len(hosting) > asked:  # an instance came back with it after it was loaded elsewhere
            extra = sorted(hosting, key=lambda a: (a in placed.hosts, a))[: len(hosting) - asked]
            for address in extra:
                if self.pools.client.unload(address, token, name, version):
                    report.unloaded.append(f"{record.service}@{address}")
            hosting = [a for a in hosting if a not in extra]
        now = sorted({*hosting, *added})
        if set(now) == set(placed.hosts):
            return
        lost = sorted(set(placed.hosts) - set(now))
        gained = sorted(set(now) - set(placed.hosts))
        reason = (
            f"{len(lost)} instance(s) no longer host it (died or restarted empty)"
            if lost
            else "back to its instance count"
        )
        move = PoolMove(at=time.time(), lost=lost, added=gained, reason=reason)
        updated = record.model_copy(
            update={
                "pooled": placed.model_copy(
                    update={"hosts": now, "moves": [*placed.moves, move][-MOVES_KEPT:]}
                )
            }
        )
        try:
            self.pools.store.publish(
                deployment_key(name, version), updated.model_dump_json().encode(), group=GROUP,
                expected_revision=revision,
            )  # fmt: skip
        except StoreConflict:
            return  # changed meanwhile (an undeploy, a scale): the next pass sees it as it is
        report.moved.append(f"{record.service}: lost {lost or '-'}, added {gained or '-'}")
        log.warning("moved %s in pool %s: lost %s, loaded on %s",
                    record.service, pool.name, lost, gained)  # fmt: skip
