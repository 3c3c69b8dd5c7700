"""``KubernetesOrchestrator``: the ``Orchestrator`` that runs instances as Kubernetes Deployments.

The only module that imports the official ``kubernetes`` client (lazily: the ``[kubernetes]``
extra). Objects come from ``render`` and are applied with server-side apply (field manager
``autoai``, conflicts forced); what pods do is read back through ``_status``. Instances still
register themselves in the store, and that registration, not pod readiness, is what launch and
scale wait for: the SDK sees exactly what it saw with the local orchestrator.

```
ControlPlaneError
  ├── StartFailed (autoai.orchestrators)   instances did not become ready: pods' log tail, events
  └── Unavailable
        └── KubernetesError                the API server refused a call or could not be reached
```
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from config_store import ConfigStore, Instance

from ..errors import Unavailable
from ..orchestrators import StartFailed
from ..schema import DeploySpec, InstanceHealth, KubernetesObjects, Placement, PodSlot
from ._render import (
    CONTAINER,
    MANAGED_BY,
    POOL_REPOSITORY,
    SERVICE_ANNOTATION,
    object_name,
    render,
    selector,
)
from ._settings import KubernetesSettings
from ._status import (
    deployment_problem,
    event_lines,
    health_rows,
    live_pods,
    pending_summary,
    pod_problem,
    registered,
    restarted,
    slots,
)

__all__ = ["FIELD_MANAGER", "KubernetesError", "KubernetesOrchestrator", "api_client"]

log = logging.getLogger("autoai.kubernetes")

FIELD_MANAGER: Final = "autoai"
_APPLY: Final = "application/apply-patch+yaml"
_MERGE: Final = "application/merge-patch+json"
_INSTALL: Final = "pip install 'autoai[kubernetes]'"
# kind -> (API group attribute, method name suffix)
_KINDS: Final = {
    "Deployment": ("apps", "deployment"),
    "ConfigMap": ("core", "config_map"),
    "Service": ("core", "service"),
    "Secret": ("core", "secret"),
}


class KubernetesError(Unavailable):
    """The Kubernetes API refused a call or could not be reached; ``detail["status"]`` is the
    HTTP status (0: no answer)."""


def _client_module() -> Any:
    try:
        import kubernetes
    except ImportError as exc:
        raise ImportError(
            f"the Kubernetes orchestrator needs the official client: {_INSTALL}"
        ) from exc
    return kubernetes


def api_client(settings: KubernetesSettings) -> Any:
    """An API client: the in-cluster ServiceAccount when running in a pod and no kubeconfig is
    set, else the kubeconfig (``settings.kubeconfig``, ``KUBECONFIG``, ``~/.kube/config``).

    Raises:
        ImportError: the ``[kubernetes]`` extra is missing (the message says what to install).
        KubernetesError: no usable configuration.
    """
    k8s = _client_module()
    if settings.kubeconfig is None and settings.context is None:
        configuration = k8s.client.Configuration()
        try:
            k8s.config.load_incluster_config(client_configuration=configuration)
            return k8s.client.ApiClient(configuration)
        except k8s.config.ConfigException:
            pass  # not in a pod: the kubeconfig
    try:
        return k8s.config.new_client_from_config(
            config_file=settings.kubeconfig, context=settings.context
        )
    except (k8s.config.ConfigException, OSError) as exc:
        raise KubernetesError(f"no usable Kubernetes configuration: {exc}", {"status": 0}) from exc


class KubernetesOrchestrator:
    """Runs each deployment as a Deployment of ``eas-server`` pods, with a ConfigMap, a headless
    Service and (given a token) a Secret that the Deployment owns.

    Args:
        store: where instances register (the control plane's store).
        settings: namespace, images, Secret and claim names, timeouts.
        repo_dir: the control plane's model repository, mounted at the same path in pods.
        client: an API client (default: ``api_client(settings)``).
        poll: seconds between looks at pods and registrations while waiting.
        request_timeout: seconds one API call may take.
    """

    kind = "kubernetes"

    def __init__(
        self,
        store: ConfigStore,
        settings: KubernetesSettings,
        repo_dir: str | Path,
        *,
        client: Any = None,
        poll: float = 1.0,
        request_timeout: float = 30.0,
    ):
        k8s = _client_module()
        self.store = store
        self.settings = settings
        self.repo_dir = str(Path(repo_dir).resolve())
        self.poll = poll
        self.request_timeout = request_timeout
        self.client = client if client is not None else api_client(settings)
        self.apps = k8s.client.AppsV1Api(self.client)
        self.core = k8s.client.CoreV1Api(self.client)
        self._api_exception: type[Exception] = k8s.client.exceptions.ApiException
        import urllib3

        self._transport_errors = (urllib3.exceptions.HTTPError, OSError)

    @property
    def namespace(self) -> str:
        return self.settings.namespace

    # -- calls --------------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, missing_ok: bool = False,
              **kwargs: Any) -> Any:  # fmt: skip
        """One API call, its answer in JSON form; errors become ``KubernetesError`` (a 404 with
        ``missing_ok``: None)."""
        try:
            answer = fn(*args, _request_timeout=self.request_timeout, **kwargs)
        except self._api_exception as exc:
            status = int(getattr(exc, "status", 0) or 0)
            if status == 404 and missing_ok:
                return None
            raise KubernetesError(
                f"Kubernetes API: {what}: {status} {getattr(exc, 'reason', '')}: "
                f"{str(getattr(exc, 'body', '') or '')[:500]}",
                {"status": status},
            ) from exc
        except self._transport_errors as exc:
            raise KubernetesError(f"Kubernetes API: {what}: {exc}", {"status": 0}) from exc
        return self.client.sanitize_for_serialization(answer)

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply one rendered object; returns it as the API server has it."""
        group, kind = _KINDS[obj["kind"]]
        api = self.apps if group == "apps" else self.core
        name = obj["metadata"]["name"]
        return dict(
            self._call(
                f"apply {obj['kind']} {self.namespace}/{name}",
                getattr(api, f"patch_namespaced_{kind}"),
                name=name,
                namespace=self.namespace,
                body=dict(obj),
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type=_APPLY,
            )
        )

    def _deployment(self, name: str) -> dict[str, Any] | None:
        found = self._call(
            f"read Deployment {self.namespace}/{name}",
            self.apps.read_namespaced_deployment,
            name=name,
            namespace=self.namespace,
            missing_ok=True,
        )
        return None if found is None else dict(found)

    def _scale(self, name: str, replicas: int) -> None:
        self._call(
            f"scale Deployment {self.namespace}/{name} to {replicas}",
            self.apps.patch_namespaced_deployment,
            name=name,
            namespace=self.namespace,
            body={"spec": {"replicas": replicas}},
            field_manager=FIELD_MANAGER,
            _content_type=_MERGE,
        )

    def _delete(self, name: str) -> None:
        """Delete a Deployment; the garbage collector removes its pods and owned objects."""
        self._call(
            f"delete Deployment {self.namespace}/{name}",
            self.apps.delete_namespaced_deployment,
            name=name,
            namespace=self.namespace,
            propagation_policy="Background",
            missing_ok=True,
        )

    def pods(self, service: str) -> list[dict[str, Any]]:
        """The service's pods (all of them, terminating ones too) in JSON form."""
        match = ",".join(f"{k}={v}" for k, v in selector(service, self.settings).items())
        found = self._call(
            f"list pods {match}",
            self.core.list_namespaced_pod,
            namespace=self.namespace,
            label_selector=match,
        )
        return list(found.get("items") or [])

    def _log_tail(self, pod: Mapping[str, Any], lines: int = 20) -> list[str]:
        name = pod["metadata"]["name"]
        try:
            text = self._call(
                f"read log of {name}",
                self.core.read_namespaced_pod_log,
                name=name,
                namespace=self.namespace,
                container=CONTAINER,
                tail_lines=lines,
                previous=restarted(pod),
            )
        except KubernetesError as exc:
            return [f"(no log: {exc})"]
        return str(text or "").splitlines()[-lines:]

    def _events(self, prefix: str) -> list[str]:
        try:
            found = self._call(
                "list events", self.core.list_namespaced_event, namespace=self.namespace
            )
        except KubernetesError as exc:
            return [f"(no events: {exc})"]
        return event_lines(found.get("items") or [], prefix)

    # -- waiting ------------------------------------------------------------------------------

    def _wait_gone(self, name: str, timeout: float) -> None:
        """Wait while a Deployment of that name is being deleted (an undeploy just before)."""
        deadline = time.monotonic() + timeout
        while (found := self._deployment(name)) is not None and (found.get("metadata") or {}).get(
            "deletionTimestamp"
        ):
            if time.monotonic() > deadline:
                raise StartFailed(f"deployment {name} is still being deleted", {"log": []})
            time.sleep(self.poll)

    def _wait_registered(
        self,
        service: str,
        wanted: int,
        progress: Callable[[str], None] | None,
    ) -> list[PodSlot]:
        """Until ``wanted`` pods registered; a pod that cannot start fails it at once.

        Raises:
            StartFailed: a pod crashed, its image cannot be pulled, pods cannot be created, or
                not all registered within ``start_timeout`` (log tail and events in ``detail``).
        """
        name = object_name(service)
        deadline = time.monotonic() + self.settings.start_timeout
        said = -1
        while True:
            pods = live_pods(self.pods(service))
            found = registered(pods, self.store.instances(service))
            if len(found) >= wanted:
                return found
            if len(found) != said and progress is not None:
                progress(f"{len(found)}/{wanted} instance(s) of {service} registered")
            said = len(found)
            # only pods not serving yet: a registered one's past restarts are no reason to fail
            serving = {f.pod for f in found}
            pending = [p for p in pods if p["metadata"]["name"] not in serving]
            failing = next((p for p in pending if pod_problem(p)), None)
            problem = deployment_problem(self._deployment(name) or {}) or (
                None if failing is None else pod_problem(failing)
            )
            if problem is None and time.monotonic() > deadline:
                problem = (
                    f"{service}: {len(found)}/{wanted} instance(s) registered within "
                    f"{self.settings.start_timeout:g} s: {pending_summary(pending)}"
                )
                failing = next(iter(pending), None)
            if problem is not None:
                raise StartFailed(
                    problem,
                    {
                        "service": service,
                        "pod": None if failing is None else failing["metadata"]["name"],
                        "log": [] if failing is None else self._log_tail(failing),
                        "events": self._events(name),
                    },
                )
            time.sleep(self.poll)

    def _wait_deregistered(self, service: str, at_most: int) -> None:
        """Until at most ``at_most`` instances are registered, for the drain time and a margin
        (a pod that takes longer is Kubernetes's to kill; nothing waits on it)."""
        deadline = time.monotonic() + self.settings.drain_seconds + 15
        while len(self.store.instances(service)) > at_most and time.monotonic() < deadline:
            time.sleep(self.poll)

    # -- the Orchestrator interface -----------------------------------------------------------

    def launch(
        self,
        service: str,
        service_json: Mapping[str, Any],
        spec: DeploySpec,
        instances: int,
        *,
        first_port: int = 0,
        progress: Callable[[str], None] | None = None,
    ) -> Placement:
        """Apply the deployment's objects and wait until ``instances`` pods registered.

        The Deployment goes first with no replica (its uid makes it the owner of the others),
        then its dependents, then the replicas: no pod starts before its ConfigMap and Secrets
        exist. ``first_port`` does not apply: every pod has its own IP and listens on
        ``settings.port``.

        Raises:
            InvalidRequest: the objects cannot be rendered (nothing was applied).
            StartFailed: the pods did not all register, or the API refused (the Deployment, and
                with it everything, is deleted again).
        """
        del first_port
        pool = "model_repository" in service_json  # a pool's instances: no model of their own
        args: dict[str, Any] = {
            "name": str(spec.metadata.pool) if pool else str(service_json["name"]),
            "version": "" if pool else str(service_json["version"]),
            "service": service,
            "processor": "repository" if pool else str(service_json.get("processor", "onnx")),
            "service_json": service_json,
            "spec": spec,
            "settings": self.settings,
            "repo_dir": self.repo_dir,
            "pool": pool,
        }
        objects = render(**args)
        deployment = objects[0]
        name = deployment["metadata"]["name"]
        try:
            self._wait_gone(name, self.settings.drain_seconds + 60)
            empty = copy.deepcopy(deployment)
            empty["spec"]["replicas"] = 0
            uid = self.apply(empty)["metadata"]["uid"]
            for dependent in render(**args, owner_uid=uid)[1:]:
                self.apply(dependent)
            self.apply(deployment)
            if progress is not None:
                progress(f"applied {self.namespace}/{name}: {instances} replica(s)")
            found = self._wait_registered(service, instances, progress)
        except BaseException as exc:
            self._forget(name)
            if isinstance(exc, KubernetesError):
                raise StartFailed(str(exc), {"service": service, "log": []}) from exc
            raise
        names = KubernetesObjects(
            namespace=self.namespace,
            deployment=name,
            service=name,
            configmap=name,
            secret=objects[3]["metadata"]["name"] if len(objects) > 3 else None,
        )
        return Placement(instances=slots(found, instances), kubernetes=names)

    def _forget(self, name: str) -> None:
        try:
            self._delete(name)
        except KubernetesError as exc:  # the leader's sweep removes it later
            log.warning("could not delete deployment %s: %s", name, exc)

    def _name(self, service: str, placement: Placement) -> str:
        """The Deployment's name: as recorded, else as rendered."""
        names = placement.kubernetes
        return names.deployment if names is not None else object_name(service)

    def abandon(self, service: str, placement: Placement) -> None:
        self._forget(self._name(service, placement))

    def resize(
        self,
        service: str,
        placement: Placement,
        instances: int,
        *,
        progress: Callable[[str], None] | None = None,
    ) -> tuple[Placement, Callable[[], None]]:
        """Scale up now (new pods registered before this returns) or down in the returned step
        (the ReplicaSet picks the pods; they drain on SIGTERM).

        Raises:
            StartFailed: added pods did not register (the replicas are set back).
            KubernetesError: the API refused.
        """
        name = self._name(service, placement)
        before = len(placement.instances)
        if instances >= before:
            self._scale(name, instances)
            try:
                found = self._wait_registered(service, instances, progress)
            except BaseException:
                try:
                    self._scale(name, before)
                except KubernetesError as exc:
                    log.warning("could not scale %s back to %d: %s", name, before, exc)
                raise
            return placement.model_copy(update={"instances": slots(found, instances)}), lambda: None
        found = registered(self.pods(service), self.store.instances(service))

        def finish() -> None:
            self._scale(name, instances)
            self._wait_deregistered(service, instances)

        return placement.model_copy(update={"instances": slots(found, instances)}), finish

    def teardown(self, service: str, placement: Placement) -> None:
        """Delete the Deployment (its pods, ConfigMap, Service and Secret follow) and wait until
        its instances deregistered (they do on SIGTERM, then drain).

        Raises:
            KubernetesError: the API refused (nothing was deleted).
        """
        self._delete(self._name(service, placement))
        self._wait_deregistered(service, 0)

    def health(
        self, service: str, placement: Placement, registered: Sequence[Instance]
    ) -> list[InstanceHealth]:
        """One row per pod (``alive``: running, ``ready``: registered); the registrations alone
        when the API cannot be reached."""
        try:
            pods: list[dict[str, Any]] | None = self.pods(service)
        except KubernetesError as exc:
            return list(health_rows(None, registered, str(exc)))
        return list(health_rows(pods, registered))

    def pool_repository(self, service: str) -> str:
        """The pods' ``emptyDir`` (``render`` mounts it for a pool)."""
        return POOL_REPOSITORY

    def service_token(self, service: str, placement: Placement) -> str | None:
        """None: a token lives only in its Secret, which the control plane's Role may create but
        never read back (deploy/k8s/rbac.yaml), so pools here run without one (``PoolService``
        refuses a pooled deploy with a token on this orchestrator)."""
        return None

    # -- reconciliation -----------------------------------------------------------------------

    def reconcile(self, known_services: Callable[[], Collection[str]]) -> list[str]:
        """Delete this control plane's Deployments whose service no record or running operation
        names; returns their names.

        ``known_services`` is called after the Deployments were listed, so that a deploy that
        started meanwhile (its operation marker is taken before anything is applied) is known.

        Raises:
            KubernetesError: the API refused the listing (nothing was deleted).
        """
        match = f"app.kubernetes.io/managed-by={MANAGED_BY},autoai.io/control-plane=" + (
            self.settings.control_plane
        )
        found = self._call(
            f"list deployments {match}",
            self.apps.list_namespaced_deployment,
            namespace=self.namespace,
            label_selector=match,
        )
        known = set(known_services())
        removed = []
        for deployment in found.get("items") or []:
            meta = deployment.get("metadata") or {}
            service = (meta.get("annotations") or {}).get(SERVICE_ANNOTATION)
            if service is None or meta.get("deletionTimestamp") or service in known:
                continue
            log.warning("deleting deployment %s: no record names %s", meta["name"], service)
            self._delete(meta["name"])
            removed.append(str(meta["name"]))
        return removed
