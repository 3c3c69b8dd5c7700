"""The one exception hierarchy of ``autoai.control``; callers need a single ``except ControlError``.

```
ControlError                  anything a ControlClient raises (status, error, detail, url)
  ├── InvalidRequest          400 / 422: the control plane refused the request as malformed
  │     └── PayloadTooLarge   413: the body (the model file) is over its limit
  ├── Unauthorized            401: no admin token was sent
  ├── Forbidden               403: the token sent is not the admin token
  ├── NotFound                404: no such model, version, deployment or job
  ├── Conflict                409: the request contradicts the current state
  ├── Unavailable             503: the control plane's store is unavailable; retry later
  │     └── Unreachable       no answer at all: refused, reset, timed out
  ├── InsufficientStorage     507: the model repository is full
  ├── ServerError             any other error status (a 500 is a bug of the server)
  ├── UnexpectedAnswer        a success whose body is not the document expected
  ├── JobFailed               a job ended ``failed``; ``job`` holds its last state
  └── JobTimeout              ``wait_job``'s bound passed first (also a ``TimeoutError``)
```
Error answers carry ``{"error": ..., "detail": ...}`` (autoai.api's one shape); both are kept.
httpx's exceptions are converted once, in ``_base``, and chained; they never reach callers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "Conflict",
    "ControlError",
    "Forbidden",
    "InsufficientStorage",
    "InvalidRequest",
    "JobFailed",
    "JobTimeout",
    "NotFound",
    "PayloadTooLarge",
    "ServerError",
    "Unauthorized",
    "Unavailable",
    "UnexpectedAnswer",
    "Unreachable",
]


class ControlError(Exception):
    """Base class of the control-plane client's errors.

    Attributes:
        error: the server's ``error`` message (or what went wrong on this side).
        status: the HTTP status of the answer; ``None`` when there was none.
        detail: the server's ``detail`` mapping (empty when absent).
        url: the control plane's base URL.
    """

    def __init__(
        self,
        error: str,
        *,
        status: int | None = None,
        detail: Mapping[str, Any] | None = None,
        url: str = "",
    ):
        super().__init__(f"{error} (HTTP {status})" if status is not None else error)
        self.error = error
        self.status = status
        self.detail: dict[str, Any] = dict(detail or {})
        self.url = url


class InvalidRequest(ControlError, ValueError):
    """400 or 422: a malformed body, a bad name, a file that is not an ONNX model. A 422 lists
    each problem in ``detail["problems"]``."""


class PayloadTooLarge(InvalidRequest):
    """413: the request body, or the model file in it, is over its limit."""


class Unauthorized(ControlError):
    """401: the request carried no admin token (or not as a bearer token)."""


class Forbidden(ControlError):
    """403: a token came, but not the admin token."""


class NotFound(ControlError, LookupError):
    """404: no such model, version, deployment or job (or route)."""


class Conflict(ControlError):
    """409: the request contradicts the current state (a deployed version, a stale revision)."""


class Unavailable(ControlError):
    """503: the control plane cannot reach its store; nothing changed, retry later.

    Attributes:
        retry_after: the server's ``Retry-After`` in seconds, when it sent one.
    """

    def __init__(
        self,
        error: str,
        *,
        status: int | None = None,
        detail: Mapping[str, Any] | None = None,
        url: str = "",
        retry_after: float | None = None,
    ):
        super().__init__(error, status=status, detail=detail, url=url)
        self.retry_after = retry_after


class Unreachable(Unavailable):
    """No HTTP answer: nothing listens at the URL, the connection broke, or it timed out.

    Attributes:
        reason: what the transport said (``[Errno 111] Connection refused``).
        timed_out: whether the request timed out (the server may have acted on it).
    """

    def __init__(self, error: str, *, url: str, reason: str, timed_out: bool = False):
        super().__init__(error, url=url)
        self.reason = reason
        self.timed_out = timed_out


class InsufficientStorage(ControlError):
    """507: the model repository has no room; nothing was registered."""


class ServerError(ControlError):
    """Any other error status (a 500 is a bug of the control plane: its log says more)."""


class UnexpectedAnswer(ControlError):
    """A success status whose body is not the JSON document the endpoint promises (another
    server at the URL, or client and server of different versions)."""


class JobFailed(ControlError):
    """A job of the control plane ended ``failed``.

    Attributes:
        job: the job's last state (a ``Job`` document, or its JSON where none is typed).
    """

    def __init__(self, error: str, job: Any, *, detail: Mapping[str, Any] | None = None):
        super().__init__(error, detail=detail)
        self.job = job


class JobTimeout(ControlError, TimeoutError):
    """``wait_job`` gave up before the job ended; the job itself goes on.

    Attributes:
        job: the job's last state seen.
    """

    def __init__(self, error: str, job: Any):
        super().__init__(error)
        self.job = job


STATUS_ERRORS: Final[dict[int, type[ControlError]]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: InvalidRequest,
    503: Unavailable,
    507: InsufficientStorage,
}
"""HTTP status -> error class; any other error status is a ``ServerError``."""
