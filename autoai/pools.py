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
from .operations import GROUP, POOL_MARKER, Operations, pool_key
from .orchestrators import Orchestrator
from .placement import choose
from .pool_client import MemberClient, MemberUnreachable
from .schema import (
    DEFAULT_POOL_INSTANCES,
    DeploymentRecord,
    DeployMetadata,
    DeploySpec,
    InstanceHealth,
    LocalInstanceHealth,
    MemberResources,
    Pool,
    PoolRecord,
)

__all__ = ["PoolService", "disk_bytes", "pool_service"]

log = logging.getLogger("autoai.pools")

_FILL_WAIT_S: Final = 900.0
"""How long a deploy waits for another operation on its pool (a deploy loading there)."""


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
                f"{metadata.pool_instances} (metadata.pool_instances): a pool keeps its size",
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
