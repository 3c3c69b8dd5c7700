"""Deployments: a registered version served by instances, plain or blade-optimized.

``deploy`` checks the request at once (model version exists, spec well-formed, not deployed yet),
then runs the long part as a job: ``blade_aspect.on_deploy`` (optimize or not, which processor),
the orchestrator starts the instances and waits for them to register, and the deployment record
(``control`` group, key ``deployment.<name>.<version>``) is written last, so a failed deploy leaves
nothing behind and whatever was serving keeps serving.

Deploy, scale and undeploy of one version hold an operation marker (``operation.<name>.<version>``,
created by compare-and-swap, naming the replica) while they run: a second operation on the same
version is a conflict, and the reconciler leaves the version alone while a live replica works on
it. A marker whose replica died is stale; the reconciler removes it and kills what it had started.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import blade_aspect
from config_store import ConfigStore, Conflict as StoreConflict

from .errors import Conflict, InvalidRequest, NotFound
from .jobs import Job, JobRunner
from .orchestrators import Orchestrator
from .repository import ModelRepository

__all__ = ["DeploymentService"]

GROUP: Final = "control"
MAX_INSTANCES: Final = 16
_SERVER_METADATA = ("rpc", "workers", "worker_threads", "intra_op_threads")
MODELS_GROUP: Final = "models"


def _key(name: str, version: str) -> str:
    return f"deployment.{name}.{version}"


def operation_key(name: str, version: str) -> str:
    return f"operation.{name}.{version}"


def _instances(spec: Mapping[str, Any]) -> int:
    metadata = spec.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        raise InvalidRequest(f"metadata must be an object, got {metadata!r}")
    value = metadata.get("instance", 1)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_INSTANCES:
        raise InvalidRequest(
            f"metadata.instance is {value!r}, expected an integer from 1 to {MAX_INSTANCES}",
            {"instance": value},
        )
    return value


def _first_port(spec: Mapping[str, Any], instances: int) -> int:
    value = (spec.get("metadata") or {}).get("port", 0)
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or not (value == 0 or 1024 <= value <= 65535 - instances)
    ):
        raise InvalidRequest(
            f"metadata.port is {value!r}, expected 0 (any free port) or a port from 1024 "
            f"(instance i listens on port + i)",
            {"port": value},
        )
    return value


def _resources(spec: Mapping[str, Any]) -> dict[str, Any]:
    """``metadata.cpu`` (cores per instance: the server's intra-op threads) and ``metadata.gpu``
    (cards per instance: honoured by orchestrators that place instances on GPUs)."""
    metadata = spec.get("metadata") or {}
    out: dict[str, Any] = {}
    for key, low in (("cpu", 1), ("gpu", 0)):
        if key in metadata:
            value = metadata[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise InvalidRequest(
                    f"metadata.{key} is {value!r}, expected an integer >= {low}", {key: value}
                )
            out[key] = value
    return out


def traffic_versions(table: Mapping[str, Any]) -> set[str]:
    """Versions a published table sends calls to: weighted routes, their fallbacks, the shadow."""
    used = set()
    for route in table.get("routes") or []:
        if (route.get("weight") or 0) > 0:
            used.add(str(route["version"]))
            if route.get("fallback_version"):
                used.add(str(route["fallback_version"]))
    shadow = table.get("shadow")
    if isinstance(shadow, Mapping) and shadow.get("version") is not None:
        used.add(str(shadow["version"]))
    return used


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
    ):
        self.store = store
        self.repository = repository
        self.orchestrator = orchestrator
        self.jobs = jobs
        self.artifacts_dir = Path(artifacts_dir)
        self.replica = replica
        """This control plane's candidate id in the leader election (marks its operations)."""

    def _record(self, name: str, version: str) -> dict[str, Any] | None:
        item = self.store.get(_key(name, version), group=GROUP)
        return None if item is None else dict(json.loads(item.content))

    def _begin(self, name: str, version: str, what: str) -> int:
        """Take the version's operation marker; returns its revision.

        Raises:
            Conflict: another operation on this version is running.
        """
        marker = {"replica": self.replica, "operation": what, "started": time.time()}
        try:
            return self.store.publish(
                operation_key(name, version), json.dumps(marker).encode(), group=GROUP,
                expected_revision=0,
            )  # fmt: skip
        except StoreConflict:
            item = self.store.get(operation_key(name, version), group=GROUP)
            running = json.loads(item.content) if item is not None else {}
            raise Conflict(
                f"model {name!r} version {version!r}: a {running.get('operation', 'previous')} "
                "is still running; wait for its job",
                {"name": name, "version": version, "running": running},
            ) from None

    def _end(self, name: str, version: str, revision: int) -> None:
        try:
            self.store.remove(operation_key(name, version), group=GROUP, expected_revision=revision)
        except StoreConflict:  # taken over meanwhile (this replica was thought dead)
            pass

    @contextmanager
    def _operation(self, name: str, version: str, revision: int) -> Iterator[None]:
        try:
            yield
        finally:
            self._end(name, version, revision)

    def is_deployed(self, name: str, version: str) -> bool:
        return self._record(name, version) is not None

    def deploy(self, name: str, version: str, spec: Mapping[str, Any]) -> Job:
        """Start deploying; the job's result is the deployment and the blade report.

        Raises:
            NotFound: no such model version.
            InvalidRequest: the spec is malformed.
            Conflict: the version is already deployed.
        """
        model = self.repository.version(name, version)
        if not isinstance(spec, Mapping):
            raise InvalidRequest("the deploy spec must be a JSON object")
        try:
            blade_aspect.wants_blade(spec)
        except blade_aspect.AspectError as exc:
            raise InvalidRequest(str(exc)) from exc
        instances = _instances(spec)
        first_port = _first_port(spec, instances)
        resources = _resources(spec)
        if self.is_deployed(name, version):
            raise Conflict(
                f"model {name!r} version {version!r} is already deployed; undeploy it first",
                {"name": name, "version": version},
            )
        marker = self._begin(name, version, "deploy")
        if self.is_deployed(name, version):  # finished between the check and the marker
            self._end(name, version, marker)
            raise Conflict(
                f"model {name!r} version {version!r} is already deployed; undeploy it first",
                {"name": name, "version": version},
            )

        def work(job: Job) -> dict[str, Any]:
            with self._operation(name, version, marker):
                return run(job)

        def run(job: Job) -> dict[str, Any]:
            job.step("plan: optimize or not, which processor", 0.05)
            try:
                plan = blade_aspect.on_deploy(
                    Path(model.path),
                    spec,
                    output_dir=self.artifacts_dir / f"{name}-{version}",
                    progress=lambda step, status: job.say(f"blade: {step}: {status}"),
                )
            except blade_aspect.NotOptimized as exc:
                job.result = {"report": exc.report}
                raise InvalidRequest(str(exc), {"report": exc.report}) from exc
            except blade_aspect.AspectError as exc:
                raise InvalidRequest(str(exc)) from exc
            job.say(plan.reason)
            service = f"{name}-{version}"
            metadata = {
                k: v for k, v in (spec.get("metadata") or {}).items() if k in _SERVER_METADATA
            }
            if "cpu" in resources and "intra_op_threads" not in metadata:
                metadata["intra_op_threads"] = resources["cpu"]
            service_json: dict[str, Any] = {
                "name": name,
                "version": version,
                "processor": plan.processor,
                "model_path": str(plan.model_path),
                "metadata": metadata,
            }
            if spec.get("token"):
                service_json["token"] = spec["token"]
            job.step(f"start {instances} instance(s) of {service}", 0.6)
            fields = self.orchestrator.launch(
                service, service_json, spec, instances, progress=job.say, first_port=first_port
            )
            record = {
                "schema_version": 1,
                "name": name,
                "version": version,
                "service": service,
                "processor": plan.processor,
                "blade": plan.blade,
                "model_sha256": model.sha256,
                "orchestrator": self.orchestrator.kind,
                **fields,
                "spec": {k: v for k, v in spec.items() if k != "token"},
                "created": time.time(),
            }
            try:
                self.store.publish(
                    _key(name, version), json.dumps(record).encode(), group=GROUP,
                    expected_revision=0,
                )  # fmt: skip
            except StoreConflict as exc:
                self.orchestrator.abandon(service, fields)
                raise Conflict(
                    f"model {name!r} version {version!r} was deployed meanwhile"
                ) from exc
            job.step("ready", 1.0)
            return {"deployment": self._describe(record), "report": plan.report}

        try:
            return self.jobs.submit("deploy", f"deploy {name} version {version}", work)
        except BaseException:
            self._end(name, version, marker)
            raise

    def scale(self, name: str, version: str, instances: int) -> Job:
        """Change a deployment's number of instances without dropping calls: new instances are
        started and registered before the record names them; removed ones leave the record first
        and are drained (SIGTERM: deregister, finish in-flight calls, exit).

        Raises:
            NotFound: the version is not deployed.
            InvalidRequest: ``instances`` out of range.
            Conflict: another operation on the version is running.
        """
        wanted = _instances({"metadata": {"instance": instances}})
        self.repository.version(name, version)
        if self._record(name, version) is None:
            raise NotFound(
                f"model {name!r} version {version!r} is not deployed",
                {"name": name, "version": version},
            )
        marker = self._begin(name, version, "scale")

        def work(job: Job) -> dict[str, Any]:
            with self._operation(name, version, marker):
                return run(job)

        def run(job: Job) -> dict[str, Any]:
            item = self.store.get(_key(name, version), group=GROUP)
            if item is None:
                raise NotFound(f"model {name!r} version {version!r} was undeployed meanwhile")
            record = json.loads(item.content)
            job.step(f"scale from {len(record['instances'])} to {wanted} instance(s)", 0.2)
            fields, finish = self.orchestrator.resize(
                record["service"], record, wanted, progress=job.say
            )
            metadata = {**(record["spec"].get("metadata") or {}), "instance": wanted}
            updated = {**record, **fields, "spec": {**record["spec"], "metadata": metadata}}
            try:
                self.store.publish(
                    _key(name, version), json.dumps(updated).encode(), group=GROUP,
                    expected_revision=item.revision,
                )  # fmt: skip
            except StoreConflict as exc:
                if wanted > len(record["instances"]):  # stop what was added
                    before = len(record["instances"])
                    self.orchestrator.resize(record["service"], updated, before)[1]()
                raise Conflict(f"the deployment of {name!r} {version!r} changed meanwhile") from exc
            job.step("drain removed instances", 0.6)
            finish()
            record = updated
            job.step("scaled", 1.0)
            return {"deployment": self._describe(record)}

        try:
            return self.jobs.submit("scale", f"scale {name} version {version} to {wanted}", work)
        except BaseException:
            self._end(name, version, marker)
            raise

    def _describe(self, record: Mapping[str, Any]) -> dict[str, Any]:
        live = self.store.instances(record["service"])
        instances = self.orchestrator.health(record["service"], record, live)
        return {
            **{k: v for k, v in record.items() if k != "instances"},
            "instances": instances,
            "endpoints": [f"http://{i.address}" for i in live],
        }

    def list(self) -> list[dict[str, Any]]:
        """Every deployment with its instances' health, by model then version."""
        found = []
        for key in self.store.keys(GROUP):
            if not key.startswith("deployment."):
                continue
            item = self.store.get(key, group=GROUP)
            if item is not None:
                found.append(self._describe(json.loads(item.content)))
        return sorted(found, key=lambda d: (d["name"], int(d["version"])))

    def get(self, name: str, version: str) -> dict[str, Any]:
        """The deployment with its instances' health.

        Raises:
            NotFound: the version is not deployed.
        """
        self.repository.version(name, version)
        record = self._record(name, version)
        if record is None:
            raise NotFound(
                f"model {name!r} version {version!r} is not deployed",
                {"name": name, "version": version},
            )
        return self._describe(record)

    def undeploy(self, name: str, version: str, *, force: bool = False) -> None:
        """Stop the instances (drained with SIGTERM) and forget the deployment.

        Raises:
            NotFound: the version is not deployed.
            Conflict: the published route table sends calls to it (weight, fallback or shadow)
                and ``force`` is not set; or another operation on it is running.
            InvalidRequest: a malformed name or version.
        """
        self.repository.version(name, version)
        if self.store.get(_key(name, version), group=GROUP) is None:
            raise NotFound(
                f"model {name!r} version {version!r} is not deployed",
                {"name": name, "version": version},
            )
        table = self.store.get(name, group=MODELS_GROUP)
        if (
            not force
            and table is not None
            and version in traffic_versions(json.loads(table.content))
        ):
            raise Conflict(
                f"model {name!r} version {version!r} carries traffic in route table revision "
                f"{table.revision}; publish a table without it first, or pass force=true",
                {"name": name, "version": version, "revision": table.revision},
            )
        marker = self._begin(name, version, "undeploy")
        with self._operation(name, version, marker):
            item = self.store.get(_key(name, version), group=GROUP)
            if item is None:
                return
            record = json.loads(item.content)
            self.orchestrator.teardown(record["service"], record)
            self.store.remove(_key(name, version), group=GROUP)
