"""Deployments: a registered version served by instances, plain or blade-optimized.

``deploy`` checks the request at once (model version exists, not deployed yet; the spec is a
``DeploySpec``, valid by construction), then runs the long part as a job:
``blade_aspect.on_deploy`` (optimize or not, which processor), the orchestrator starts the
instances and waits for them to register, and the ``DeploymentRecord`` (``control`` group, key
``deployment.<name>.<version>``) is written last, so a failed deploy leaves nothing behind and
whatever was serving keeps serving.

Deploy, scale and undeploy of one version hold an operation marker (``operation.<name>.<version>``,
an ``OperationMarker`` created by compare-and-swap, naming the replica; ``autoai.operations``) while
they run: a second operation on the same version is a conflict, and the reconciler leaves the
version alone while a live replica works on it. A marker whose replica died is stale; the
reconciler removes it and kills what it had started.

A deploy that names ``metadata.pool`` starts no instance of its own: after the same plan, it takes
the pool's marker (waiting its turn behind other deploys into the pool), creates the pool if it is
new, and loads the version onto ``metadata.instance`` of the pool's instances (``autoai.pools``);
its record says so (``pooled``: pool, hosts, the load's service JSON). Undeploy unloads it, scale
loads or unloads it on more or fewer of the pool's instances.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

import blade_aspect
from config_store import ConfigStore, Conflict as StoreConflict

from .errors import Conflict, InvalidRequest, NotFound
from .jobs import Job, JobRunner
from .operations import GROUP, POOL_MARKER, Operations, deployment_key, operation_key
from .orchestrators import Orchestrator
from .pools import PoolService, disk_bytes
from .repository import ModelRepository
from .schema import (
    MAX_INSTANCES,
    BladeMeta,
    Deployment,
    DeploymentRecord,
    DeploySpec,
    JobResult,
    PooledPlacement,
    RouteTable,
)

__all__ = ["GROUP", "DeploymentService", "operation_key", "read_record", "traffic_versions"]

MODELS_GROUP: Final = "models"
_key = deployment_key


def read_record(content: bytes) -> DeploymentRecord:
    """A stored deployment record (``DeploymentRecord.model_validate_json``).

    Raises:
        pydantic.ValidationError: not a deployment record.
    """
    return DeploymentRecord.model_validate_json(content)


def _secret(spec: DeploySpec) -> str | None:
    return None if spec.token is None else spec.token.get_secret_value()


def traffic_versions(table: RouteTable) -> set[str]:
    """Versions a published route table sends calls to: weighted routes, the fallbacks they chain
    to, the shadow (``RouteTable.traffic_versions``)."""
    return set(table.traffic_versions)


class DeploymentService:
    """Deploy, describe and undeploy model versions."""

    def __init__(
        self,
        store: ConfigStore,
        repository: ModelRepository,
        orchestrator: Orchestrator,
        jobs: JobRunner,
        artifacts_dir: str | Path,
        replica: str = "",
        pools: PoolService | None = None,
    ):
        self.store = store
        self.repository = repository
        self.orchestrator = orchestrator
        self.jobs = jobs
        self.artifacts_dir = Path(artifacts_dir)
        self.replica = replica
        """This control plane's candidate id in the leader election (marks its operations)."""
        self.operations = Operations(store, replica)
        self.pools = pools or PoolService(store, orchestrator, self.operations)
        """The pools pooled deploys go to (``metadata.pool``)."""

    def _record(self, name: str, version: str) -> tuple[DeploymentRecord, int] | None:
        item = self.store.get(_key(name, version), group=GROUP)
        return None if item is None else (read_record(item.content), item.revision)

    def _write(self, record: DeploymentRecord, expected_revision: int) -> None:
        content = record.model_dump_json().encode()
        self.store.publish(
            _key(record.name, record.version), content, group=GROUP,
            expected_revision=expected_revision,
        )  # fmt: skip

    def _begin(self, name: str, version: str, what: str) -> int:
        """Take the version's operation marker; returns its revision.

        Raises:
            Conflict: another operation on this version is running.
        """
        return self.operations.begin(name, version, what)

    def _end(self, name: str, version: str, revision: int) -> None:
        self.operations.end(name, version, revision)

    def _operation(self, name: str, version: str, revision: int) -> AbstractContextManager[None]:
        return self.operations.held(name, version, revision)

    def is_deployed(self, name: str, version: str) -> bool:
        return self.store.get(_key(name, version), group=GROUP) is not None

    def _already(self, name: str, version: str) -> Conflict:
        return Conflict(
            f"model {name!r} version {version!r} is already deployed; undeploy it first",
            {"name": name, "version": version},
        )

    def deploy(self, name: str, version: str, spec: DeploySpec) -> Job:
        """Start deploying; the job's result is the deployment and the blade report.

        Raises:
            NotFound: no such model version.
            Conflict: the version is already deployed; a pool size other than its pool's.
            InvalidRequest: more instances than its pool has, or another token than its pool's.
        """
        model = self.repository.version(name, version)
        if self.is_deployed(name, version):
            raise self._already(name, version)
        if spec.metadata.pool is not None:  # checked again once the pool's marker is held
            self.pools.check_deploy(spec.metadata, _secret(spec))
        marker = self._begin(name, version, "deploy")
        if self.is_deployed(name, version):  # finished between the check and the marker
            self._end(name, version, marker)
            raise self._already(name, version)

        def work(job: Job) -> JobResult:
            with self._operation(name, version, marker):
                return run(job)

        def run(job: Job) -> JobResult:
            job.step("plan: optimize or not, which processor", 0.05)
            try:
                plan = blade_aspect.on_deploy(
                    Path(model.path),
                    spec.aspect(),
                    output_dir=self.artifacts_dir / f"{name}-{version}",
                    progress=lambda step, status: job.say(f"blade: {step}: {status}"),
                )
            except blade_aspect.NotOptimized as exc:
                job.result = JobResult(report=exc.report)
                raise InvalidRequest(str(exc), {"report": exc.report}) from exc
            except blade_aspect.AspectError as exc:
                raise InvalidRequest(str(exc)) from exc
            job.say(plan.reason)
            if spec.metadata.pool is not None:
                return self._deploy_pooled(job, name, version, model.sha256, spec, plan)
            service = f"{name}-{version}"
            service_json: dict[str, Any] = {
                "name": name,
                "version": version,
                "processor": plan.processor,
                "model_path": str(plan.model_path),
                "metadata": spec.metadata.server(),
            }
            if spec.token is not None:
                service_json["token"] = spec.token.get_secret_value()
            instances = spec.metadata.instance
            job.step(f"start {instances} instance(s) of {service}", 0.6)
            placement = self.orchestrator.launch(
                service, service_json, spec, instances, progress=job.say,
                first_port=spec.metadata.port,
            )  # fmt: skip
            record = DeploymentRecord(
                name=name,
                version=version,
                service=service,
                processor=plan.processor,
                blade=None if plan.blade is None else BladeMeta.model_validate(plan.blade),
                model_sha256=model.sha256,
                orchestrator=self.orchestrator.kind,
                instances=placement.instances,
                kubernetes=placement.kubernetes,
                spec=spec.stored(),
                created=time.time(),
            )
            try:
                self._write(record, expected_revision=0)
            except StoreConflict as exc:
                self.orchestrator.abandon(service, placement)
                raise Conflict(
                    f"model {name!r} version {version!r} was deployed meanwhile"
                ) from exc
            job.step("ready", 1.0)
            return JobResult(deployment=self._describe(record), report=plan.report)

        try:
            return self.jobs.submit("deploy", f"deploy {name} version {version}", work)
        except BaseException:
            self._end(name, version, marker)
            raise

    def _deploy_pooled(
        self,
        job: Job,
        name: str,
        version: str,
        sha256: str,
        spec: DeploySpec,
        plan: blade_aspect.DeployPlan,
    ) -> JobResult:
        """The rest of a pooled deploy's job: the pool (created if new), the loads, the record,
        all under the pool's marker (deploys into one pool take turns)."""
        pool_name = str(spec.metadata.pool)
        service = f"{name}-{version}"
        config: dict[str, Any] = {
            "name": name,
            "version": version,
            "processor": plan.processor,
            "model_path": str(plan.model_path),
            "service": service,
            "metadata": spec.metadata.server(),
        }
        model_bytes = disk_bytes(plan.model_path)
        job.step(f"take pool {pool_name!r}", 0.55)
        held = self.pools.hold(pool_name, f"deploy {name} {version}", job.say)
        with self.operations.held(POOL_MARKER, pool_name, held):
            pool = self.pools.ensure(spec, _secret(spec), f"{name}/{version}", job.say)
            count = spec.metadata.instance
            job.step(f"load {service} on {count} instance(s) of pool {pool_name!r}", 0.7)
            hosts = self.pools.place(pool, config, model_bytes, count, job.say)
            record = DeploymentRecord(
                name=name,
                version=version,
                service=service,
                processor=plan.processor,
                blade=None if plan.blade is None else BladeMeta.model_validate(plan.blade),
                model_sha256=sha256,
                orchestrator=pool.orchestrator,
                instances=[],
                spec=spec.stored(),
                created=time.time(),
                pooled=PooledPlacement(
                    pool=pool_name, hosts=sorted(hosts), config=config, model_bytes=model_bytes
                ),
            )
            try:
                self._write(record, expected_revision=0)
            except StoreConflict as exc:
                self.pools.unplace(pool, name, version, hosts)
                raise Conflict(
                    f"model {name!r} version {version!r} was deployed meanwhile"
                ) from exc
        job.step("ready", 1.0)
        return JobResult(deployment=self._describe(record), report=plan.report)

    def scale(self, name: str, version: str, instances: int) -> Job:
        """Change a deployment's number of instances without dropping calls: new instances are
        started and registered before the record names them; removed ones leave the record first
        and are drained (SIGTERM: deregister, finish in-flight calls, exit).

        Raises:
            NotFound: the version is not deployed.
            InvalidRequest: ``instances`` out of range.
            Conflict: another operation on the version is running.
        """
        if not 1 <= instances <= MAX_INSTANCES:
            raise InvalidRequest(
                f"metadata.instance is {instances!r}, expected an integer from 1 to "
                f"{MAX_INSTANCES}",
                {"instance": instances},
            )
        self.repository.version(name, version)
        found = self._record(name, version)
        if found is None:
            raise NotFound(
                f"model {name!r} version {version!r} is not deployed",
                {"name": name, "version": version},
            )
        placed = found[0].pooled
        if placed is not None:
            pool = self.pools.require(placed.pool)
            if instances > pool.size:
                raise InvalidRequest(
                    f"metadata.instance is {instances}, more than the {pool.size} instance(s) "
                    f"of pool {pool.name!r}",
                    {"instance": instances, "pool": pool.name},
                )
        marker = self._begin(name, version, "scale")

        def work(job: Job) -> JobResult:
            with self._operation(name, version, marker):
                return run(job)

        def run(job: Job) -> JobResult:
            found = self._record(name, version)
            if found is None:
                raise NotFound(f"model {name!r} version {version!r} was undeployed meanwhile")
            record, revision = found
            if record.pooled is not None:
                return self._scale_pooled(job, record, revision, instances)
            before = len(record.instances)
            job.step(f"scale from {before} to {instances} instance(s)", 0.2)
            placement, finish = self.orchestrator.resize(
                record.service, record.placement, instances, progress=job.say
            )
            metadata = record.spec.metadata.model_copy(update={"instance": instances})
            updated = record.placed(placement).model_copy(
                update={"spec": record.spec.model_copy(update={"metadata": metadata})}
            )
            try:
                self._write(updated, expected_revision=revision)
            except StoreConflict as exc:
                if instances > before:  # stop what was added
                    self.orchestrator.resize(record.service, placement, before)[1]()
                raise Conflict(f"the deployment of {name!r} {version!r} changed meanwhile") from exc
            job.step("drain removed instances", 0.6)
            finish()
            job.step("scaled", 1.0)
            return JobResult(deployment=self._describe(updated))

        try:
            return self.jobs.submit("scale", f"scale {name} version {version} to {instances}", work)
        except BaseException:
            self._end(name, version, marker)
            raise

    def _scale_pooled(
        self, job: Job, record: DeploymentRecord, revision: int, instances: int
    ) -> JobResult:
        """Load the version onto more of its pool's instances, or unload it from some (after
        the record no longer names them), under the pool's marker."""
        placed = record.pooled
        assert placed is not None
        name, version = record.name, record.version
        held = self.pools.hold(placed.pool, f"scale {name} {version}", job.say)
        with self.operations.held(POOL_MARKER, placed.pool, held):
            pool = self.pools.require(placed.pool)
            hosting = self.pools.hosting(pool, name, version)
            job.step(f"scale from {len(hosting)} to {instances} instance(s) of the pool", 0.2)
            added: list[str] = []
            removed: list[str] = []
            if instances > len(hosting):
                need = instances - len(hosting)
                added = self.pools.place(pool, placed.config, placed.model_bytes, need, job.say)
            else:  # the recorded ones are kept first
                ordered = sorted(hosting, key=lambda a: (a not in placed.hosts, a))
                removed = ordered[instances:]
            hosts = sorted(set(hosting) - set(removed) | set(added))
            metadata = record.spec.metadata.model_copy(update={"instance": instances})
            updated = record.model_copy(
                update={
                    "spec": record.spec.model_copy(update={"metadata": metadata}),
                    "pooled": placed.model_copy(update={"hosts": hosts}),
                }
            )
            try:
                self._write(updated, expected_revision=revision)
            except StoreConflict as exc:
                self.pools.unplace(pool, name, version, added)
                raise Conflict(f"the deployment of {name!r} {version!r} changed meanwhile") from exc
            job.step("unload from removed instances", 0.6)
            self.pools.unplace(pool, name, version, removed)
        job.step("scaled", 1.0)
        return JobResult(deployment=self._describe(updated))

    def _describe(self, record: DeploymentRecord) -> Deployment:
        live = self.store.instances(record.service)
        if record.pooled is not None:
            instances = self.pools.hosting_health(record)
            return Deployment.describe(record, instances, [f"http://{i.address}" for i in live])
        instances = self.orchestrator.health(record.service, record.placement, live)
        return Deployment.describe(record, instances, [f"http://{i.address}" for i in live])

    def list(self) -> list[Deployment]:
        """Every deployment with its instances' health, by model then version."""
        found = []
        for key in self.store.keys(GROUP):
            if not key.startswith("deployment."):
                continue
            item = self.store.get(key, group=GROUP)
            if item is not None:
                found.append(self._describe(read_record(item.content)))
        return sorted(found, key=lambda d: (d.name, int(d.version)))

    def get(self, name: str, version: str) -> Deployment:
        """The deployment with its instances' health.

        Raises:
            NotFound: the version is not deployed.
        """
        self.repository.version(name, version)
        found = self._record(name, version)
        if found is None:
            raise NotFound(
                f"model {name!r} version {version!r} is not deployed",
                {"name": name, "version": version},
            )
        return self._describe(found[0])

    def _carries_traffic(self, name: str, version: str) -> int | None:
        """The revision of the published table when it sends calls to ``version``, else None.

        Raises:
            Conflict: the published table cannot be read (so nothing says the version is free).
        """
        item = self.store.get(name, group=MODELS_GROUP)
        if item is None:
            return None
        try:
            table = RouteTable.model_validate_json(
                item.content, context={"revision": item.revision}
            )
        except ValidationError as exc:
            raise Conflict(
                f"route table revision {item.revision} of {name!r} cannot be read ({exc}), so "
                "it may send calls to this version; publish a new table, or pass force=true",
                {"name": name, "version": version, "revision": item.revision},
            ) from exc
        return item.revision if version in traffic_versions(table) else None

    def undeploy(self, name: str, version: str, *, force: bool = False) -> None:
        """Stop the instances (drained with SIGTERM) and forget the deployment.

        Raises:
            NotFound: the version is not deployed.
            Conflict: the published route table sends calls to it (weight, fallback or shadow)
                and ``force`` is not set; or another operation on it is running.
            InvalidRequest: a malformed name or version.
        """
        self.repository.version(name, version)
        if not self.is_deployed(name, version):
            raise NotFound(
                f"model {name!r} version {version!r} is not deployed",
                {"name": name, "version": version},
            )
        revision = None if force else self._carries_traffic(name, version)
        if revision is not None:
            raise Conflict(
                f"model {name!r} version {version!r} carries traffic in route table revision "
                f"{revision}; publish a table without it first, or pass force=true",
                {"name": name, "version": version, "revision": revision},
            )
        marker = self._begin(name, version, "undeploy")
        with self._operation(name, version, marker):
            found = self._record(name, version)
            if found is None:
                return
            record = found[0]
            if record.pooled is not None:
                self._unload_pooled(record)
            else:
                self.orchestrator.teardown(record.service, record.placement)
            self.store.remove(_key(name, version), group=GROUP)

    def _unload_pooled(self, record: DeploymentRecord) -> None:
        """Unload a pooled version from every instance of its pool that hosts it or that its
        record names (drained: deregistered first)."""
        placed = record.pooled
        assert placed is not None
        found = self.pools.record(placed.pool)
        if found is None:
            return  # the pool is gone, and its instances with it
        pool = found[0]
        hosting = self.pools.hosting(pool, record.name, record.version)
        self.pools.unplace(pool, record.name, record.version, sorted({*placed.hosts, *hosting}))
