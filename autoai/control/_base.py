"""Everything the two control-plane clients share that is not I/O: the URL and token, each
endpoint's request, the conversion of answers (documents, or one ``ControlError`` per status),
and job polling.

An endpoint is a ``Call``: method, path, body, and how to read a success answer. ``ControlClient``
sends it blocking and ``AsyncControlClient`` awaiting; both hand the answer (or the httpx error)
back here, so neither decides anything of its own. Job polling is written once, as a generator
(``_BaseControlClient._poll_job``): it yields a ``Call`` (read the job) or a float (sleep that
long), is sent back the job, and returns the finished job or raises ``JobFailed`` /
``JobTimeout``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, SecretStr, TypeAdapter, ValidationError

from ..schema import (
    Deployment,
    DeploymentList,
    Health,
    JobAccepted,
    JobInfo,
    ModelInfo,
    ModelList,
    ModelVersion,
    Pool,
    PoolList,
    PublishResult,
    Release,
    ReleaseList,
    RollbackResult,
    TargetGroup,
)
from ._bundle import pack_bundle, part_uploads
from ._errors import (
    STATUS_ERRORS,
    ControlError,
    JobFailed,
    JobTimeout,
    ServerError,
    Unavailable,
    UnexpectedAnswer,
    Unreachable,
)

__all__ = ["DEFAULT_URL", "JOB_DONE", "Body", "Call", "OnProgress"]

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
DEFAULT_URL: Final = "http://127.0.0.1:8080"
JOB_DONE: Final = ("succeeded", "failed")
"""The states a job ends in."""
_API: Final = "/api/v1"
_OCTET: Final = "application/octet-stream"

OnProgress = Callable[[JobInfo], None]
"""Called with every reading of a job that ``wait_job`` polls."""
Body = Mapping[str, Any] | BaseModel
"""A request body: a typed request of ``autoai.schema`` (``DeploySpec``, ``PublishRequest``), or
its JSON form."""


def segment(value: str) -> str:
    """A model name or version as one URL path segment."""
    return quote(str(value), safe="")


def _body(body: Body) -> dict[str, Any]:
    """A request body as JSON: a model dumped as the API reads it (unset fields left out), with
    the fields it never dumps but the server reads (a deploy spec's token) put back."""
    if not isinstance(body, BaseModel):
        return dict(body)
    doc = body.model_dump(mode="json", exclude_unset=True)
    for name, info in type(body).model_fields.items():
        value = getattr(body, name)
        if info.exclude and name in body.model_fields_set and value is not None:
            doc[name] = value.get_secret_value() if isinstance(value, SecretStr) else value
    return doc


def _json(response: httpx.Response, url: str) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        path = response.request.url.path
        raise UnexpectedAnswer(
            f"the answer to {response.request.method} {path} is not JSON "
            f"({response.headers.get('content-type', 'no content type')})",
            status=response.status_code,
            url=url,
        ) from exc


@functools.cache
def _adapter(kind: Any) -> TypeAdapter[Any]:
    return TypeAdapter(kind)


def _parsed(kind: Any, response: httpx.Response, url: str) -> Any:
    """The JSON answer validated as ``kind`` (a model, or ``list[model]``)."""
    try:
        return _adapter(kind).validate_python(_json(response, url))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'the body'}: {e['msg']}"
            for e in exc.errors()[:3]
        )
        raise UnexpectedAnswer(
            f"the answer to {response.request.method} {response.request.url.path} is not "
            f"the document expected: {problems}",
            status=response.status_code,
            url=url,
        ) from exc


def _model(kind: type[M]) -> Callable[[httpx.Response, str], M]:
    """A reader of answers that are one ``kind`` document."""

    def read(response: httpx.Response, url: str) -> M:
        parsed: M = _parsed(kind, response, url)
        return parsed

    return read


def _part(kind: type[M], pick: Callable[[M], T]) -> Callable[[httpx.Response, str], T]:
    """A reader of ``kind`` answers that returns ``pick`` of it (``ModelList.models``)."""

    def read(response: httpx.Response, url: str) -> T:
        return pick(_model(kind)(response, url))

    return read


def _targets(response: httpx.Response, url: str) -> list[TargetGroup]:
    parsed: list[TargetGroup] = _parsed(list[TargetGroup], response, url)
    return parsed


def _nothing(response: httpx.Response, url: str) -> None:
    return None


def _text(response: httpx.Response, url: str) -> str:
    return response.text


def _response(response: httpx.Response, url: str) -> httpx.Response:
    return response


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request of the REST API and how its success answer is read.

    ``read`` gets the 2xx answer and the base URL (for messages) and returns the document.
    """

    method: str
    path: str
    read: Callable[[httpx.Response, str], T]
    params: dict[str, Any] | None = None
    json: Any = None
    files: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    content: bytes | None = None
    headers: dict[str, str] | None = None

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``httpx.Client.request`` for this call."""
        return {
            "params": self.params,
            "json": self.json,
            "files": self.files,
            "data": self.data,
            "content": self.content,
            "headers": self.headers,
        }


def error_of(response: httpx.Response, url: str) -> ControlError:
    """The ``ControlError`` of an error answer, whatever its body (ours, or plain text)."""
    status = response.status_code
    message, detail = response.reason_phrase or "error", None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        found = body.get("error", body.get("detail"))
        if isinstance(found, str) and found:
            message = found
        if isinstance(body.get("detail"), dict):
            detail = body["detail"]
    elif response.text.strip():
        message = response.text.strip().splitlines()[0][:200]
    cls = STATUS_ERRORS.get(status, ServerError)
    if cls is Unavailable:
        retry = response.headers.get("retry-after", "")
        after = float(retry) if retry.replace(".", "", 1).isdigit() else None
        return Unavailable(message, status=status, detail=detail, url=url, retry_after=after)
    return cls(message, status=status, detail=detail, url=url)


def transport_error(exc: httpx.HTTPError, url: str) -> ControlError:
    """An httpx error as ours: ``Unreachable`` when no answer came (refused, reset, timed out)."""
    if isinstance(exc, httpx.TimeoutException):
        return Unreachable(
            f"the control plane at {url} did not answer in time ({type(exc).__name__})",
            url=url,
            reason=str(exc) or type(exc).__name__,
            timed_out=True,
        )
    if isinstance(exc, httpx.TransportError):
        return Unreachable(
            f"no control plane answers at {url}: {exc}", url=url, reason=str(exc) or repr(exc)
        )
    return ControlError(f"{type(exc).__name__} calling {url}: {exc}", url=url)


class _BaseControlClient:
    """Options, requests and answers of the REST API; the subclasses only send.

    Args:
        base_url: the control plane, such as ``http://127.0.0.1:8080``.
        token: the admin token (``AUTOAI_ADMIN_TOKEN`` of ``autoai up``), sent as a bearer
            token; ``None`` sends none.
        timeout: seconds for each request.
        poll: seconds between two reads of a job in ``wait_job``.
        clock: the monotonic clock ``wait_job`` measures its bound with.

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
        clock: Callable[[], float] = time.monotonic,
    ):
        try:
            url = httpx.URL(base_url)
        except httpx.InvalidURL as exc:
            raise ValueError(f"{base_url!r} is not a URL: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"{base_url!r} is not an http:// or https:// URL")
        self.base_url = base_url.rstrip("/")
        secret = token.get_secret_value() if isinstance(token, SecretStr) else token
        self._headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        self._timeout = timeout
        self._poll = poll
        self._clock = clock

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    def _answer(self, call: Call[T], response: httpx.Response) -> T:
        if response.status_code >= 400:
            raise error_of(response, self.base_url)
        return call.read(response, self.base_url)

    # --- the endpoints, as calls ------------------------------------------------------------

    @staticmethod
    def _request(
        method: str, path: str, *, params: dict[str, Any] | None = None, **kwargs: Any
    ) -> Call[httpx.Response]:
        return Call(method, path, _response, params=params or None, **kwargs)

    @staticmethod
    def _healthz() -> Call[Health]:
        return Call("GET", "/healthz", _model(Health))

    @staticmethod
    def _metrics() -> Call[str]:
        return Call("GET", "/metrics", _text)

    @staticmethod
    def _register(
        name: str,
        file: Path | bytes | None,
        uri: str | None,
        filename: str | None,
        parts: Mapping[str, Path | bytes] | None = None,
    ) -> Call[ModelVersion]:
        if sum(x is not None for x in (file, uri, parts)) != 1:
            raise ValueError(
                "register_model needs exactly one of file= and uri= (or parts= for a bundle)"
            )
        read = _model(ModelVersion)
        if uri is not None:
            return Call("POST", f"{_API}/models", read, json={"name": name, "uri": uri})
        if parts is not None:
            uploads = part_uploads(parts)
            return Call("POST", f"{_API}/models", read, files=uploads, data={"name": name})
        assert file is not None
        if isinstance(file, Path) and file.is_dir():  # a bundle directory: one archive
            content, filename = pack_bundle(file), filename or f"{file.name}.tar.gz"
        elif isinstance(file, Path):
            content, filename = file.read_bytes(), filename or file.name
        else:
            content, filename = file, filename or "model.onnx"
        upload = {"file": (filename, content, _OCTET)}
        return Call("POST", f"{_API}/models", read, files=upload, data={"name": name})

    @staticmethod
    def _list_models() -> Call[list[ModelInfo]]:
        return Call("GET", f"{_API}/models", _part(ModelList, lambda m: m.models))

    @staticmethod
    def _get_model(name: str) -> Call[ModelInfo]:
        return Call("GET", f"{_API}/models/{segment(name)}", _model(ModelInfo))

    @staticmethod
    def _version_path(name: str, version: str) -> str:
        return f"{_API}/models/{segment(name)}/versions/{segment(version)}"

    def _get_version(self, name: str, version: str) -> Call[ModelVersion]:
        return Call("GET", self._version_path(name, version), _model(ModelVersion))

    def _delete_version(self, name: str, version: str) -> Call[None]:
        return Call("DELETE", self._version_path(name, version), _nothing)

    def _deploy(self, name: str, version: str, spec: Body) -> Call[str]:
        body = _body(spec)
        path = f"{self._version_path(name, version)}/deploy"
        return Call("POST", path, _part(JobAccepted, lambda a: a.job), json=body)

    def _undeploy(self, name: str, version: str, force: bool) -> Call[None]:
        path = f"{self._version_path(name, version)}/deploy"
        return Call("DELETE", path, _nothing, params={"force": "true"} if force else None)

    def _scale(self, name: str, version: str, instances: int) -> Call[str]:
        path = f"{self._version_path(name, version)}/deployment"
        body = {"metadata": {"instance": instances}}
        return Call("PATCH", path, _part(JobAccepted, lambda a: a.job), json=body)

    @staticmethod
    def _deployments() -> Call[list[Deployment]]:
        read = _part(DeploymentList, lambda d: d.deployments)
        return Call("GET", f"{_API}/deployments", read)

    def _deployment(self, name: str, version: str) -> Call[Deployment]:
        path = f"{self._version_path(name, version)}/deployment"
        return Call("GET", path, _model(Deployment))

    @staticmethod
    def _pools() -> Call[list[Pool]]:
        return Call("GET", f"{_API}/pools", _part(PoolList, lambda p: p.pools))

    @staticmethod
    def _pool(name: str) -> Call[Pool]:
        return Call("GET", f"{_API}/pools/{segment(name)}", _model(Pool))

    @staticmethod
    def _scale_pool(name: str, instances: int) -> Call[str]:
        path = f"{_API}/pools/{segment(name)}/scale"
        body = {"instances": instances}
        return Call("POST", path, _part(JobAccepted, lambda a: a.job), json=body)

    @staticmethod
    def _delete_pool(name: str) -> Call[None]:
        return Call("DELETE", f"{_API}/pools/{segment(name)}", _nothing)

    @staticmethod
    def _job(job_id: str) -> Call[JobInfo]:
        return Call("GET", f"{_API}/jobs/{segment(job_id)}", _model(JobInfo))

    @staticmethod
    def _publish(name: str, body: Body) -> Call[PublishResult]:
        path = f"{_API}/models/{segment(name)}/publish"
        return Call("POST", path, _model(PublishResult), json=_body(body))

    @staticmethod
    def _releases(name: str, limit: int) -> Call[list[Release]]:
        path = f"{_API}/models/{segment(name)}/releases"
        read = _part(ReleaseList, lambda r: r.releases)
        return Call("GET", path, read, params={"limit": limit})

    @staticmethod
    def _rollback(name: str, revision: int | None) -> Call[int]:
        path = f"{_API}/models/{segment(name)}/rollback"
        read = _part(RollbackResult, lambda r: r.revision)
        return Call("POST", path, read, json={"revision": revision})

    @staticmethod
    def _prometheus_targets() -> Call[list[TargetGroup]]:
        return Call("GET", f"{_API}/sd/prometheus", _targets)

    # --- job polling ------------------------------------------------------------------------

    def _poll_job(
        self,
        job_id: str,
        timeout: float | None,
        poll: float | None,
        on_progress: OnProgress | None,
    ) -> Generator[Call[JobInfo] | float, JobInfo, JobInfo]:
        """Read the job until it ends, every ``poll`` seconds (``None``: the client's), with
        ``on_progress`` called on every reading.

        Yields a ``Call`` to send (and be sent its answer) or seconds to sleep (and be sent
        anything). Returns the succeeded job.

        Raises:
            JobFailed: the job failed.
            JobTimeout: it had not ended after ``timeout`` seconds (``None``: no bound).
        """
        every = self._poll if poll is None else poll
        deadline = None if timeout is None else self._clock() + timeout
        while True:
            job = yield self._job(job_id)
            if on_progress is not None:
                on_progress(job)
            if job.state in JOB_DONE:
                break
            now = self._clock()
            if deadline is not None and now >= deadline:
                raise JobTimeout(
                    f"job {job_id} ({job.title or job.kind}) was still {job.state} at "
                    f"{job.step or '?'} after {timeout:g} s",
                    job,
                )
            yield every if deadline is None else max(0.0, min(every, deadline - now))
        if job.state == "failed":
            error = job.error.error if job.error else "no reason given"
            raise JobFailed(
                f"{job.title or job.kind} failed: {error}",
                job,
                detail=job.error.detail if job.error else None,
            )
        return job
