"""The one exception hierarchy of the control plane's services (``autoai``, not the SDK).

```
ControlPlaneError
  ├── InvalidRequest   the request is malformed or names something unusable (400 / 422)
  │     └── PayloadTooLarge  the body (or the model file in it) is over its limit (413)
  ├── Unauthorized     no admin token, or not a bearer token (401)
  ├── Forbidden        a bearer token that is not the admin token (403)
  ├── NotFound         no such model, version, deployment or job (404)
  ├── Conflict         the request contradicts the current state: deleting a deployed version,
  │                    a stale expected_revision (409)
  ├── Unavailable      the config store cannot be reached, or the model repository cannot be
  │                    written: nothing was changed, retry later (503)
  └── InsufficientStorage  the model repository's disk is full or over quota: nothing was
                       registered (507)
```
Services raise these and know nothing about HTTP; the API maps them to status codes in one table
(``autoai.api``). Each carries a ``detail`` mapping for machine readers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "Conflict",
    "ControlPlaneError",
    "Forbidden",
    "InsufficientStorage",
    "InvalidRequest",
    "NotFound",
    "PayloadTooLarge",
    "Unauthorized",
    "Unavailable",
]


class ControlPlaneError(Exception):
    """Base class of the control plane's errors.

    Attributes:
        detail: structured context (which model, which version, what was expected).
    """

    def __init__(self, message: str, detail: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.detail: dict[str, Any] = dict(detail or {})


class InvalidRequest(ControlPlaneError, ValueError):
    """Malformed input: a bad name, a file that is not an ONNX model, an unsupported URI."""


class PayloadTooLarge(InvalidRequest):
    """A request body, or the model file it carries, is larger than its limit."""


class Unauthorized(ControlPlaneError):
    """No admin token came with the request (or not as ``Authorization: Bearer ...``)."""


class Forbidden(ControlPlaneError):
    """A token came, but not the admin token."""


class NotFound(ControlPlaneError, LookupError):
    """No such model, version, deployment or job."""


class Conflict(ControlPlaneError):
    """The request contradicts the current state (the message says which and why)."""


class Unavailable(ControlPlaneError):
    """A dependency (the config store) cannot be reached; the request changed nothing."""


class InsufficientStorage(ControlPlaneError):
    """The model repository has no room (ENOSPC, EDQUOT, EFBIG) for the file; nothing of it
    remains and no version was recorded."""
