"""``ControlClient``: the control plane's REST API, blocking (httpx.Client). Requests, answers and
job polling are ``_base``'s; this module only sends and sleeps."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx
from pydantic import SecretStr

from ..schema import (
    Deployment,
    Health,
    JobInfo,
    ModelInfo,
    ModelVersion,
    Pool,
    PublishResult,
    Release,
    TargetGroup,
)
from ._base import Body, Call, OnProgress, _BaseControlClient, transport_error

__all__ = ["ControlClient"]

T = TypeVar("T")


class ControlClient(_BaseControlClient):
    """The REST API of ``autoai up``, one method per endpoint.

    ```python
    with ControlClient("http://127.0.0.1:8080", token=token) as control:
        v = control.register_model("intent", file=Path("model.onnx"))
        job = control.wait_job(control.deploy("intent", v.version, {"processor": "onnx"}),
                               timeout=300, on_progress=lambda j: print(j.step))
        control.publish("intent", {"routes": [{"version": v.version, "weight": 100}]})
    ```

    Args:
        base_url: the control plane, such as ``http://127.0.0.1:8080``.
        token: the admin token, sent as a bearer token (a ``SecretStr`` is accepted).
        timeout: seconds for each request.
        poll: seconds between two reads of a job in ``wait_job``.
        transport: an httpx transport instead of real connections (tests).
        trust_env: whether proxy variables of the environment apply (httpx's meaning).
        clock: the monotonic clock ``wait_job`` measures its bound with.
        sleep: how ``wait_job`` waits between two reads.

    Every method raises a ``ControlError`` (``autoai.control``'s hierarchy) and nothing else of
    httpx: ``Unreachable`` when nothing answers, one subclass per error status otherwise.

    Raises:
        ValueError: ``base_url`` is not an ``http(s)://`` URL.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | SecretStr | None = None,
        timeout: float = 30.0,
        poll: float = 0.2,
        transport: httpx.BaseTransport | None = None,
        trust_env: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        super().__init__(base_url, token=token, timeout=timeout, poll=poll, clock=clock)
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=self._headers,
            timeout=timeout,
            transport=transport,
            trust_env=trust_env,
        )

    def _send(self, call: Call[T]) -> T:
        try:
            response = self._http.request(call.method, call.path, **call.kwargs())
        except httpx.HTTPError as exc:
            raise transport_error(exc, self.base_url) from exc
        return self._answer(call, response)

    def request(
        self, method: str, path: str, *, params: dict[str, Any] | None = None, **kwargs: Any
    ) -> httpx.Response:
        """Any request (``json=``, ``files=``, ``data=``, ``content=``, ``headers=``); the 2xx
        or 3xx answer as it came. Errors as for the other methods."""
        return self._send(self._request(method, path, params=params, **kwargs))

    def healthz(self) -> Health:
        """``GET /healthz``: this replica, whether it leads, its store's state."""
        return self._send(self._healthz())

    def metrics(self) -> str:
        """The control plane's ``/metrics`` (Prometheus text format)."""
        return self._send(self._metrics())

    def register_model(
        self,
        name: str,
        *,
        file: Path | bytes | None = None,
        uri: str | None = None,
        filename: str | None = None,
        parts: Mapping[str, Path | bytes] | None = None,
    ) -> ModelVersion:
        """Register the next version of model ``name``: upload ``file`` (a path: an ONNX
        model, a bundle archive, or a bundle directory, sent packed as one ``.tar.gz``; or the
        bytes of a model or archive named ``filename``), upload a bundle by ``parts``
        (``model``, ``tokenizer``, ``pipeline`` and, for classify and slots, ``labels``: paths
        or bytes), or let the control plane fetch ``uri`` (``file://`` also names a bundle
        directory on its host, ``http(s)://``). Returns the new version (a bundle's has
        ``bundle``: task, labels, files).

        Raises:
            ValueError: not exactly one of ``file``, ``uri`` and ``parts``; a bundle directory
                holding a link.
        """
        return self._send(self._register(name, file, uri, filename, parts))

    def list_models(self) -> list[ModelInfo]:
        """Every model with its versions."""
        return self._send(self._list_models())

    def get_model(self, name: str) -> ModelInfo:
        """One model with its versions (``NotFound`` if none)."""
        return self._send(self._get_model(name))

    def get_version(self, name: str, version: str) -> ModelVersion:
        """One version: its digest, size, signature."""
        return self._send(self._get_version(name, version))

    def delete_version(self, name: str, version: str) -> None:
        """Forget a version (``Conflict`` while it is deployed)."""
        self._send(self._delete_version(name, version))

    def deploy(self, name: str, version: str, spec: Body) -> str:
        """Start deploying a version with an EAS-style spec; returns the job's id (see
        ``wait_job``)."""
        return self._send(self._deploy(name, version, spec))

    def scale(self, name: str, version: str, instances: int) -> str:
        """Start scaling a deployment to ``instances``; returns the job's id."""
        return self._send(self._scale(name, version, instances))

    def undeploy(self, name: str, version: str, *, force: bool = False) -> None:
        """Drain and stop a version's instances (``Conflict`` while it has traffic, unless
        ``force``)."""
        self._send(self._undeploy(name, version, force))

    def deployments(self) -> list[Deployment]:
        """Every deployment with its instances (pid, alive, ready) and endpoints."""
        return self._send(self._deployments())

    def deployment(self, name: str, version: str) -> Deployment:
        """One version's deployment."""
        return self._send(self._deployment(name, version))

    def pools(self) -> list[Pool]:
        """Every pool of shared multi-model instances (``metadata.pool`` of pooled deploys),
        by name: its size, its instances' health (pid or pod, alive, ready), the deployments
        on it."""
        return self._send(self._pools())

    def pool(self, name: str) -> Pool:
        """One pool (``NotFound`` if no deploy created it)."""
        return self._send(self._pool(name))

    def scale_pool(self, name: str, instances: int) -> str:
        """Start resizing a pool to ``instances``; returns the job's id (see ``wait_job``).
        ``Conflict`` below the largest instance count of a deployment on it (its
        ``detail["deployments"]`` names them); the versions on removed instances are loaded
        onto the others before those stop."""
        return self._send(self._scale_pool(name, instances))

    def delete_pool(self, name: str) -> None:
        """Drain and stop a pool's instances and forget it (``Conflict`` while deployments are
        on it: its ``detail["deployments"]`` names them; undeploy them first)."""
        self._send(self._delete_pool(name))

    def job(self, job_id: str) -> JobInfo:
        """A job's state now."""
        return self._send(self._job(job_id))

    def wait_job(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll: float | None = None,
        on_progress: OnProgress | None = None,
    ) -> JobInfo:
        """Poll a job until it ends, every ``poll`` seconds (default: the client's ``poll``);
        ``on_progress`` gets every reading (state, progress, step, log).

        Returns:
            The succeeded job (its ``result``).

        Raises:
            JobFailed: the job failed (``job`` is its last state).
            JobTimeout: it had not ended after ``timeout`` seconds.
        """
        polling = self._poll_job(job_id, timeout, poll, on_progress)
        step = next(polling)
        try:
            while True:
                if isinstance(step, Call):
                    step = polling.send(self._send(step))
                else:
                    self._sleep(step)
                    step = next(polling)
        except StopIteration as done:
            job: JobInfo = done.value
            return job
        finally:
            polling.close()

    def publish(self, name: str, body: Body) -> PublishResult:
        """Publish a route table (``routes``, ``sticky_key``, ``shadow``,
        ``expected_revision``, ``reason``); returns the new revision's document."""
        return self._send(self._publish(name, body))

    def releases(self, name: str, *, limit: int = 20) -> list[Release]:
        """Published revisions, newest first."""
        return self._send(self._releases(name, limit))

    def rollback(self, name: str, revision: int | None = None) -> int:
        """Republish ``revision`` (``None``: the previous one); returns the new revision."""
        return self._send(self._rollback(name, revision))

    def prometheus_targets(self) -> list[TargetGroup]:
        """Every registered instance as Prometheus HTTP service-discovery target groups."""
        return self._send(self._prometheus_targets())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
