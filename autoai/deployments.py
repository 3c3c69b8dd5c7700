"""Deployments: a registered version served by instances, plain or blade-optimized.

``deploy`` checks the request at once (model version exists, spec well-formed, not deployed yet),
then runs the long part as a job: ``blade_aspect.on_deploy`` (optimize or not, which processor),
the orchestrator starts the instances and waits for them to register, and the deployment record
(``control`` group, key ``deployment.<name>.<version>``) is written last, so a failed deploy leaves
nothing behind and whatever was serving keeps serving.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import blade_aspect
from config_store import ConfigStore, Conflict as StoreConflict

from .errors import Conflict, InvalidRequest, NotFound
from .jobs import Job, JobRunner
from .orchestrators import InstanceRecord, LocalOrchestrator
from .repository import ModelRepository

__all__ = ["DeploymentService"]

GROUP: Final = "control"
MAX_INSTANCES: Final = 16
_SERVER_METADATA = ("rpc", "workers", "worker_threads", "intra_op_threads")


def _key(name: str, version: str) -> str:
    return f"deployment.{name}.{version}"


def _instances(spec: Mapping[str, Any]) -> int:
    value = (spec.get("metadata") or {}).get("instance", 1)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_INSTANCES:
        raise InvalidRequest(
            f"metadata.instance is {value!r}, expected an integer from 1 to {MAX_INSTANCES}",
            {"instance": value},
        )
    return value


class DeploymentService:
    """Deploy, describe and undeploy model versions."""

    def __init__(
        self,
        store: ConfigStore,
        repository: ModelRepository,
        orchestrator: LocalOrchestrator,
        jobs: JobRunner,
        artifacts_dir: str | Path,
    ):
        self.store = store
        self.repository = repository
        self.orchestrator = orchestrator
        self.jobs = jobs
        self.artifacts_dir = Path(artifacts_dir)

    def _record(self, name: str, version: str) -> dict[str, Any] | None:
        item = self.store.get(_key(name, version), group=GROUP)
        return None if item is None else dict(json.loads(item.content))

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
        if self.is_deployed(name, version):
            raise Conflict(
                f"model {name!r} version {version!r} is already deployed; undeploy it first",
                {"name": name, "version": version},
            )

        def work(job: Job) -> dict[str, Any]:
            job.step("plan: optimize or not, which processor", 0.05)
            try:
                plan = blade_aspect.on_deploy(
                    Path(model.path),
                    spec,
                    output_dir=self.artifacts_dir / f"{name}-{version}",
                    progress=lambda step, status: job.say(f"blade: {step}: {status}"),
                )
            except blade_aspect.AspectError as exc:
                raise InvalidRequest(str(exc)) from exc
            job.say(plan.reason)
            service = f"{name}-{version}"
            metadata = {
                k: v for k, v in (spec.get("metadata") or {}).items() if k in _SERVER_METADATA
            }
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
            records = self.orchestrator.start(service, service_json, instances, progress=job.say)
            record = {
                "schema_version": 1,
                "name": name,
                "version": version,
                "service": service,
                "processor": plan.processor,
                "blade": plan.blade,
                "model_sha256": model.sha256,
                "instances": [r.json() for r in records],
                "spec": {k: v for k, v in spec.items() if k != "token"},
                "created": time.time(),
            }
            try:
                self.store.publish(
                    _key(name, version), json.dumps(record).encode(), group=GROUP,
                    expected_revision=0,
                )  # fmt: skip
            except StoreConflict as exc:
                self.orchestrator.stop(records)
                raise Conflict(
                    f"model {name!r} version {version!r} was deployed meanwhile"
                ) from exc
            job.step("ready", 1.0)
            return {"deployment": self._describe(record), "report": plan.report}

        return self.jobs.submit("deploy", f"deploy {name} version {version}", work)

    def _describe(self, record: Mapping[str, Any]) -> dict[str, Any]:
        live = self.store.instances(record["service"])
        pids = {i.payload.get("pid") for i in live}
        instances = [
            {**r, "alive": self.orchestrator.alive(InstanceRecord(**r)), "ready": r["pid"] in pids}
            for r in record["instances"]
        ]
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

    def undeploy(self, name: str, version: str) -> None:
        """Stop the instances (drained with SIGTERM) and forget the deployment.

        Raises:
            NotFound: the version is not deployed.
        """
        item = self.store.get(_key(name, version), group=GROUP)
        if item is None:
            raise NotFound(
                f"model {name!r} version {version!r} is not deployed",
                {"name": name, "version": version},
            )
        record = json.loads(item.content)
        self.orchestrator.stop([InstanceRecord(**r) for r in record["instances"]])
        self.store.remove(_key(name, version), group=GROUP)
