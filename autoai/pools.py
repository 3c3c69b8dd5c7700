"""Pools: shared multi-model ``eas-server`` instances, and pooled versions placed on them.

A deploy that names ``metadata.pool`` loads its version onto instances of that pool instead of
starting its own. The pool is created by the first deploy that names it: the orchestrator starts
``metadata.pool_instances`` (default 2) ``eas-server`` processes (or pods) from a service JSON
``{"name": "pool-NAME", "model_repository": <an empty directory>, "token": ...}`` under the
service ``pool-NAME``, and waits for them to register, as for any deployment. Its record is
``control/pool.<name>`` (``PoolRecord``); a pool lives until ``delete`` (refused while a
deployment uses it).

Placing a version: the live instances (process or pod running, registered) are asked for
``GET /v2/resources``, ``autoai.placement`` chooses ``metadata.instance`` of them by free memory
and expected load, and each gets ``POST /v2/repository/models/{name}/load`` with the version's
service JSON (``model_path``, ``version``, ``processor``, ``service`` = ``name-version``,
``metadata``). Each loaded version registers under ``name-version`` with the instance's address,
so route tables, blade fallback and the SDK are as for exclusive instances.

``autoai.pool_repair`` (the reconciler's, on the leader) keeps every pooled deployment on as
many live instances as it asked for: a version an instance no longer hosts (it died, or came back
empty) is loaded onto other live instances, and the move is recorded in the deployment
(``PooledPlacement.moves``); versions no deployment names are unloaded. The pool's marker
(``operation.pool.<name>``) serializes creating, filling and deleting a pool, and keeps the
reconciler off a pool while a live replica works on it.

Resizing a pool (``scale``, a job) runs under that marker too. Growing starts instances through
the orchestrator (``resize``), empty: placement and the repair pass use them from then on.
Shrinking is refused below the largest ``metadata.instance`` of a deployment on the pool; the
versions the instances to be removed host are loaded onto surviving ones first, the records say
so, and only then are those instances drained and stopped, so no version drops below its count.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from config_store import ConfigStore, Conflict as StoreConflict

from .errors import Conflict, InvalidRequest, NotFound
from .jobs import Job, JobRunner
from .operations import GROUP, POOL_MARKER, Operations, pool_key
from .orchestrators import Orchestrator
from .placement import choose
from .pool_client import MemberClient, MemberUnreachable
from .schema import (
    DEFAULT_POOL_INSTANCES,
    DeploymentRecord,
    DeployMetadata,
    DeploySpec,
    HostedModel,
    InstanceHealth,
    InstanceSlot,
    JobResult,
    LocalInstance,
    LocalInstanceHealth,
    MemberResources,
    Pool,
    PoolMove,
    PoolRecord,
)

__all__ = ["MOVES_KEPT", "PoolService", "disk_bytes", "pool_service"]

log = logging.getLogger("autoai.pools")

_FILL_WAIT_S: Final = 900.0
"""How long a deploy waits for another operation on its pool (a deploy loading there)."""
MOVES_KEPT: Final = 20
"""How many ``PooledPlacement.moves`` a deployment record keeps (the last ones)."""


def pool_service(pool: str) -> str:
    """The service a pool's instances register under."""
    return f"pool-{pool}"


def disk_bytes(path: str | Path) -> int:
    """A model's size on disk: the file, or every file of a blade artifact directory."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


class PoolService:
    """Create, describe and delete pools; place pooled versions on them and repair placements.

    Args:
        store: the shared store.
        orchestrator: runs the pools' instances (the control plane's orchestrator).
        operations: this replica's operation markers.
        client: the pool instances' repository API (default: a new ``MemberClient``).
    """

    def __init__(
        self,
        store: ConfigStore,
        orchestrator: Orchestrator,
        operations: Operations,
        client: MemberClient | None = None,
    ):
        self.store = store
        self.orchestrator = orchestrator
        self.operations = operations
        self.client = client or MemberClient()

    def close(self) -> None:
        self.client.close()

    # -- records -------------------------------------------------------------------------------

    def record(self, name: str) -> tuple[PoolRecord, int] | None:
        item = self.store.get(pool_key(name), group=GROUP)
        return (
            None if item is None else (PoolRecord.model_validate_json(item.content), item.revision)
        )

    def require(self, name: str) -> PoolRecord:
        """Raises: NotFound: no such pool."""
        found = self.record(name)
        if found is None:
            raise NotFound(f"no pool {name!r}", {"pool": name})
        return found[0]

    def records(self) -> dict[str, tuple[PoolRecord, int]]:
        """Every pool record with its revision, by pool name."""
        found = {}
        for key in self.store.keys(GROUP):
            if key.startswith("pool."):
                item = self.store.get(key, group=GROUP)
                if item is not None:
                    record = PoolRecord.model_validate_json(item.content)
                    found[record.name] = (record, item.revision)
        return found

    def deployments_on(self, pool: str) -> dict[str, tuple[DeploymentRecord, int]]:
        """The pooled deployments on ``pool`` with their revisions, by key."""
        found = {}
        for key in self.store.keys(GROUP):
            if key.startswith("deployment."):
                item = self.store.get(key, group=GROUP)
                if item is None:
                    continue
                record = DeploymentRecord.model_validate_json(item.content)
                if record.pooled is not None and record.pooled.pool == pool:
                    found[key] = (record, item.revision)
        return found

    def token(self, pool: PoolRecord) -> str | None:
        """The token the pool's instances require (the one it was created with)."""
        return self.orchestrator.service_token(pool.service, pool.placement)

    def check_token(self, pool: PoolRecord, token: str | None) -> None:
        """A pooled deploy's ``token`` must be its pool's: every version on an instance is
        served with the instance's one token.

        Raises:
            InvalidRequest: another token.
        """
        if token is None:
            return
        expected = self.token(pool)
        if expected is None or not hmac.compare_digest(token.encode(), expected.encode()):
            raise InvalidRequest(
                f"pool {pool.name!r} serves every version with the token it was created with; "
                "a pooled deploy takes that token or none",
                {"pool": pool.name},
            )

    # -- creating and deleting -----------------------------------------------------------------

    def hold(self, pool: str, what: str, progress: Callable[[str], None] | None = None) -> int:
        """Take the pool's marker, waiting while another operation holds it; returns its
        revision (release it with ``self.operations.held(POOL_MARKER, pool, revision)``).

        Raises:
            Conflict: still held by another operation after a long wait.
        """
        return self.operations.wait_begin(
            POOL_MARKER, pool, what, timeout=_FILL_WAIT_S, on_wait=progress
        )

    def ensure(
        self,
        spec: DeploySpec,
        token: str | None,
        created_by: str,
        progress: Callable[[str], None] | None = None,
    ) -> PoolRecord:
        """The pool ``spec.metadata.pool``, created when missing; call with its marker held.

        A new pool gets ``metadata.pool_instances`` instances (default 2), with ``token`` as its
        token; ``metadata.cpu``, ``memory`` and ``gpu`` size each instance on Kubernetes.

        Raises:
            Conflict: it exists with another size than ``metadata.pool_instances``.
            InvalidRequest: ``metadata.instance`` is more than its size; another token.
            StartFailed: its instances did not all register (nothing is left of them).
        """
        metadata = spec.metadata
        name = str(metadata.pool)
        found = self.record(name)
        if found is not None:
            pool = found[0]
            self.check_fit(pool, metadata)
            self.check_token(pool, token)
            return pool
        self._check_new(name, metadata, token)
        size = metadata.pool_instances or DEFAULT_POOL_INSTANCES
        service = pool_service(name)
        service_json: dict[str, Any] = {
            "name": service,
            "model_repository": self.orchestrator.pool_repository(service),
        }
        if token is not None:
            service_json["token"] = token
        sizing = DeployMetadata(
            instance=size, pool=name, cpu=metadata.cpu, gpu=metadata.gpu, memory=metadata.memory
        )
        if progress is not None:
            progress(f"create pool {name!r}: {size} instance(s) of {service}")
        placement = self.orchestrator.launch(
            service, service_json, DeploySpec(metadata=sizing), size, progress=progress
        )
        pool = PoolRecord(
            name=name,
            service=service,
            size=size,
            orchestrator=self.orchestrator.kind,
            kubernetes=placement.kubernetes,
            instances=placement.instances,
            created=time.time(),
            created_by=created_by,
        )
        try:
            self.store.publish(
                pool_key(name), pool.model_dump_json().encode(), group=GROUP, expected_revision=0
            )
        except StoreConflict as exc:
            self.orchestrator.abandon(service, placement)
            raise Conflict(f"pool {name!r} was created meanwhile", {"pool": name}) from exc
        return pool

    def check_deploy(self, metadata: DeployMetadata, token: str | None) -> None:
        """What ``ensure`` would refuse, checked before a pooled deploy's job starts.

        Raises:
            Conflict: another size than the pool's.
            InvalidRequest: more instances than the pool has (or will have); another token.
        """
        name = str(metadata.pool)
        found = self.record(name)
        if found is not None:
            self.check_fit(found[0], metadata)
            self.check_token(found[0], token)
            return
        self._check_new(name, metadata, token)

    def _check_new(self, name: str, metadata: DeployMetadata, token: str | None) -> None:
        size = metadata.pool_instances or DEFAULT_POOL_INSTANCES
        if token is not None and self.orchestrator.kind == "kubernetes":
            raise InvalidRequest(
                f"pool {name!r}: a pool on Kubernetes runs without a token (the control plane "
                "could not read it back from its Secret to call the pool's repository API); "
                "deploy without token, and keep the pool's pods behind a network policy",
                {"pool": name},
            )
        if metadata.instance > size:
            raise InvalidRequest(
                f"metadata.instance is {metadata.instance}, more than the {size} instance(s) "
                f"pool {name!r} is created with (metadata.pool_instances)",
                {"pool": name, "size": size},
            )

    @staticmethod
    def check_fit(pool: PoolRecord, metadata: DeployMetadata) -> None:
        """Raises: Conflict: another pool size asked for. InvalidRequest: more instances than
        the pool has."""
        if metadata.pool_instances is not None and metadata.pool_instances != pool.size:
            raise Conflict(
                f"pool {pool.name!r} runs {pool.size} instance(s), not "
                f"{metadata.pool_instances} (metadata.pool_instances): resize it with "
                f"POST /api/v1/pools/{pool.name}/scale",
                {"pool": pool.name, "size": pool.size},
            )
        if metadata.instance > pool.size:
            raise InvalidRequest(
                f"metadata.instance is {metadata.instance}, more than the {pool.size} "
                f"instance(s) of pool {pool.name!r}",
                {"pool": pool.name, "size": pool.size},
            )

    def delete(self, name: str) -> None:
        """Stop the pool's instances and forget it.

        Raises:
            NotFound: no such pool.
            Conflict: deployments are on it (undeploy them first), or another operation on the
                pool runs.
        """
        self.require(name)
        self._refuse_in_use(name)
        revision = self.operations.begin(POOL_MARKER, name, "delete pool")
        with self.operations.held(POOL_MARKER, name, revision):
            self._refuse_in_use(name)
            found = self.record(name)
            if found is None:
                return
            pool = found[0]
            self.orchestrator.teardown(pool.service, pool.placement)
            self.store.remove(pool_key(name), group=GROUP)

    def _refuse_in_use(self, name: str) -> None:
        users = sorted(f"{r.name}/{r.version}" for r, _ in self.deployments_on(name).values())
        if users:
            raise Conflict(
                f"pool {name!r} serves {', '.join(users)}: undeploy them first",
                {"pool": name, "deployments": users},
            )

    # -- resizing -----------------------------------------------------------------------------

    def scale(self, name: str, instances: int, jobs: JobRunner) -> Job:
        """Start resizing the pool to ``instances`` instances; checked again under its marker.

        Raises:
            NotFound: no such pool.
            Conflict: a deployment on it asks for more instances than ``instances``.
        """
        self._refuse_below(self.require(name), instances)

        def work(job: Job) -> JobResult:
            held = self.hold(name, f"scale pool to {instances}", job.say)
            with self.operations.held(POOL_MARKER, name, held):
                self._resize(job, name, instances)
            job.step("scaled", 1.0)
            return JobResult()

        return jobs.submit("scale", f"scale pool {name} to {instances}", work)

    def _refuse_below(self, pool: PoolRecord, instances: int) -> None:
        """Raises: Conflict: a deployment on the pool asks for more than ``instances``."""
        asks = sorted(
            ((-r.spec.metadata.instance, f"{r.name}/{r.version}")
             for r, _ in self.deployments_on(pool.name).values()),
        )  # fmt: skip
        above = [(-count, who) for count, who in asks if -count > instances]
        if above:
            count, who = above[0]
            raise Conflict(
                f"pool {pool.name!r} cannot shrink to {instances} instance(s): {who} is loaded "
                f"on {count} (metadata.instance); scale it down first",
                {"pool": pool.name, "instances": instances,
                 "deployments": {w: c for c, w in above}},
            )  # fmt: skip

    def _resize(self, job: Job, name: str, instances: int) -> None:
        """Grow or shrink the pool (its marker held): the orchestrator's ``resize``, the versions
        on the instances to be removed loaded onto the others, the records, then the drain."""
        found = self.record(name)
        if found is None:
            raise NotFound(f"pool {name!r} was deleted meanwhile", {"pool": name})
        pool, revision = found
        self._refuse_below(pool, instances)
        if instances == pool.size:
            job.say(f"pool {name!r} already runs {instances} instance(s)")
            return
        job.step(f"scale pool {name!r} from {pool.size} to {instances} instance(s)", 0.2)
        before = pool.placement
        placement, finish = self.orchestrator.resize(
            pool.service, before, instances, progress=job.say
        )
        removed = self._slot_addresses(
            pool, [s for s in before.instances if s not in placement.instances]
        )
        moves: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
        if instances < pool.size:
            job.step(f"load what {', '.join(sorted(removed)) or '-'} host(s) elsewhere", 0.4)
            moves = self._evacuate(pool, removed, job.say)
        updated = pool.model_copy(update={"size": instances, "instances": placement.instances})
        try:
            self.store.publish(
                pool_key(name), updated.model_dump_json().encode(), group=GROUP,
                expected_revision=revision,
            )  # fmt: skip
        except StoreConflict as exc:
            for (model, version), (_, added) in moves.items():
                self.unplace(pool, model, version, added)
            if instances > pool.size:  # stop what was added
                self.orchestrator.resize(pool.service, placement, pool.size)[1]()
            raise Conflict(f"pool {name!r} changed meanwhile", {"pool": name}) from exc
        self._record_moves(
            name, instances, moves, f"pool {name!r} scaled from {pool.size} to {instances}"
        )
        if instances < pool.size:
            job.step(f"drain and stop {pool.size - instances} instance(s)", 0.8)
        finish()

    def _slot_addresses(self, pool: PoolRecord, slots: Iterable[InstanceSlot]) -> set[str]:
        """The host:port of those instances (a local one by its registration)."""
        by_pid = {i.payload.get("pid"): i.address for i in self.store.instances(pool.service)}
        found: set[str | None] = set()
        for slot in slots:
            if isinstance(slot, LocalInstance):
                found.add(by_pid.get(slot.pid))
            elif slot.ip and slot.port:
                found.add(f"{slot.ip}:{slot.port}")
        return {a for a in found if a is not None}

    def _evacuate(
        self, pool: PoolRecord, removed: set[str], progress: Callable[[str], None]
    ) -> dict[tuple[str, str], tuple[list[str], list[str]]]:
        """Load every pooled version onto surviving live instances until it is on as many as it
        asks for there (or every survivor): what ``removed`` hosts is served elsewhere before
        they stop. Returns, by (name, version), the removed instances that hosted it and where
        it was loaded. A load that fails unloads what this call loaded.

        Raises:
            NoRoom: too few survivors have room.
            LoadRefused: an instance could not load it.
            MemberUnreachable: an instance stopped answering.
        """
        token = self.token(pool)
        members = self.resources(self.members(pool), token)
        survivors = {a: r for a, r in members.items() if a not in removed}
        moves: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
        loaded: list[tuple[str, str, str]] = []
        try:
            for record, _ in sorted(self.deployments_on(pool.name).values(),
                                    key=lambda x: (x[0].name, int(x[0].version))):  # fmt: skip
                placed = record.pooled
                assert placed is not None
                name, version = record.name, record.version
                lost = sorted(
                    a for a in removed
                    if a in placed.hosts or (a in members and members[a].hosts(name, version))
                )  # fmt: skip
                hosting = [a for a, r in survivors.items() if r.hosts(name, version)]
                need = min(record.spec.metadata.instance, len(survivors)) - len(hosting)
                added: list[str] = []
                if need > 0:
                    candidates = {a: r for a, r in survivors.items() if a not in hosting}
                    for address in choose(candidates, model_bytes=placed.model_bytes, count=need):
                        progress(f"load {name} version {version} on {address} (leaving {lost})")
                        self.client.load(address, token, name, placed.config)
                        loaded.append((address, name, version))
                        added.append(address)
                        copy = HostedModel(name=name, version=version, state="READY",
                                           memory_bytes=placed.model_bytes)  # fmt: skip
                        survivors[address] = survivors[address].model_copy(
                            update={"models": [*survivors[address].models, copy]}
                        )
                if lost or added:
                    moves[(name, version)] = (lost, added)
        except BaseException:
            for address, name, version in loaded:
                self.unplace(pool, name, version, [address])
            raise
        return moves

    def _record_moves(
        self,
        pool: str,
        size: int,
        moves: Mapping[tuple[str, str], tuple[list[str], list[str]]],
        reason: str,
    ) -> None:
        """Rewrite the pool's deployment records after a resize (compare-and-swap; one changed
        meanwhile is left to the repair pass, which reads what the instances host): the moved
        ones' hosts and moves, and ``metadata.pool_instances`` to the new size where a spec
        names it (its creator's): a stored spec stays one a deploy would accept, and a scale to
        more instances than the old size stays valid."""
        for key, (record, revision) in self.deployments_on(pool).items():
            placed = record.pooled
            assert placed is not None
            update: dict[str, Any] = {}
            metadata = record.spec.metadata
            if metadata.pool_instances is not None and metadata.pool_instances != size:
                metadata = metadata.model_copy(update={"pool_instances": size})
                update["spec"] = record.spec.model_copy(update={"metadata": metadata})
            moved = moves.get((record.name, record.version))
            if moved is not None:
                lost, added = moved
                hosts = sorted((set(placed.hosts) - set(lost)) | set(added))
                move = PoolMove(at=time.time(), lost=lost, added=added, reason=reason)
                update["pooled"] = placed.model_copy(
                    update={"hosts": hosts, "moves": [*placed.moves, move][-MOVES_KEPT:]}
                )
            if not update:
                continue
            try:
                self.store.publish(
                    key, record.model_copy(update=update).model_dump_json().encode(),
                    group=GROUP, expected_revision=revision,
                )  # fmt: skip
            except StoreConflict:
                log.warning("%s changed while its pool scaled; the repair pass updates it", key)

    # -- members -------------------------------------------------------------------------------

    def _rows(self, pool: PoolRecord) -> tuple[list[InstanceHealth], dict[Any, str]]:
        """The pool's instances' health, and each registered one's address by pid."""
        registered = self.store.instances(pool.service)
        rows = self.orchestrator.health(pool.service, pool.placement, registered)
        return rows, {i.payload.get("pid"): i.address for i in registered}

    @staticmethod
    def _address(row: InstanceHealth, by_pid: Mapping[Any, str]) -> str | None:
        if isinstance(row, LocalInstanceHealth):
            return by_pid.get(row.pid)
        return f"{row.ip}:{row.port}" if row.ip and row.port else None

    def members(self, pool: PoolRecord) -> list[str]:
        """The addresses of the pool's live instances: running and registered."""
        if pool.orchestrator != self.orchestrator.kind:
            return []  # another orchestrator's pool: its instances are not ours to reach
        rows, by_pid = self._rows(pool)
        found = (self._address(r, by_pid) for r in rows if r.alive and r.ready)
        return sorted({a for a in found if a is not None})

    def resources(self, addresses: Iterable[str], token: str | None) -> dict[str, MemberResources]:
        """Each instance's resources; one that does not answer is left out (logged)."""
        found = {}
        for address in addresses:
            try:
                found[address] = self.client.resources(address, token)
            except MemberUnreachable as exc:
                log.warning("%s", exc)
        return found

    # -- placing -------------------------------------------------------------------------------

    def place(
        self,
        pool: PoolRecord,
        config: Mapping[str, Any],
        model_bytes: int,
        count: int,
        progress: Callable[[str], None] | None = None,
    ) -> list[str]:
        """Load the version of ``config`` onto ``count`` live instances of the pool that do not
        host it yet, chosen by ``autoai.placement``; returns their addresses. A load that fails
        unloads what this call loaded.

        Raises:
            NoRoom: too few instances have room (or are live).
            LoadRefused: an instance could not load it.
            MemberUnreachable: an instance stopped answering.
        """
        name, version = str(config["name"]), str(config["version"])
        token = self.token(pool)
        members = self.resources(self.members(pool), token)
        candidates = {a: r for a, r in members.items() if not r.hosts(name, version)}
        chosen = choose(candidates, model_bytes=model_bytes, count=count)
        loaded: list[str] = []
        try:
            for address in chosen:
                if progress is not None:
                    progress(f"load {name} version {version} on {pool.service} at {address}")
                self.client.load(address, token, name, config)
                loaded.append(address)
        except BaseException:
            self.unplace(pool, name, version, loaded)
            raise
        return loaded

    def unplace(self, pool: PoolRecord, name: str, version: str, addresses: Iterable[str]) -> None:
        """Unload the version from those instances (drained); one that does not answer is
        skipped (logged): a dead instance hosts nothing."""
        token = self.token(pool)
        for address in addresses:
            try:
                self.client.unload(address, token, name, version)
            except MemberUnreachable as exc:
                log.warning("unload of %s %s: %s", name, version, exc)

    def hosting(self, pool: PoolRecord, name: str, version: str) -> list[str]:
        """The live instances of the pool that host the version now."""
        members = self.resources(self.members(pool), self.token(pool))
        return sorted(a for a, r in members.items() if r.hosts(name, version))

    # -- describing ----------------------------------------------------------------------------

    def describe(self, pool: PoolRecord) -> Pool:
        """The pool with its instances' health and the deployments on it."""
        rows = self._rows(pool)[0] if pool.orchestrator == self.orchestrator.kind else []
        users = sorted(
            ((r.name, int(r.version)) for r, _ in self.deployments_on(pool.name).values()),
        )
        fields = {
            name: getattr(pool, name) for name in type(pool).model_fields if name != "instances"
        }
        return Pool(**fields, instances=rows, deployments=[f"{n}/{v}" for n, v in users])

    def describe_all(self) -> list[Pool]:
        return [
            self.describe(p) for p, _ in sorted(self.records().values(), key=lambda x: x[0].name)
        ]

    def hosting_health(self, record: DeploymentRecord) -> list[InstanceHealth]:
        """A pooled deployment's instances: the pool's that host it (``ready``: the version is
        registered there) or that its record names (a dead one shows as not alive)."""
        placed = record.pooled
        found = None if placed is None else self.record(placed.pool)
        if placed is None or found is None or found[0].orchestrator != self.orchestrator.kind:
            return []
        rows, by_pid = self._rows(found[0])
        serving = {i.address for i in self.store.instances(record.service)}
        out: list[InstanceHealth] = []
        for row in rows:
            address = self._address(row, by_pid)
            ready = address is not None and address in serving
            if ready or address in placed.hosts:
                out.append(row.model_copy(update={"ready": ready}))
        return out
