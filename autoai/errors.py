"""The one exception hierarchy of the control plane's services (``autoai``, not the SDK).

```
ControlPlaneError
  ├── InvalidRequest   the request is malformed or names something unusable (400 / 422)
  ├── Unauthorized     no or a wrong admin token (401 / 403)
  ├── NotFound         no such model, version, deployment or job (404)
  └── Conflict         the request contradicts the current state: deleting a deployed version,
                       a stale expected_revision (409)
```
Services raise these and know nothing about HTTP; the API maps them to status codes in one table
(``autoai.api``). Each carries a ``detail`` mapping for machine readers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["Conflict", "ControlPlaneError", "InvalidRequest", "NotFound", "Unauthorized"]


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


class Unauthorized(ControlPlaneError):
    """The admin token is missing or wrong."""


class NotFound(ControlPlaneError, LookupError):
    """No such model, version, deployment or job."""


class Conflict(ControlPlaneError):
    """The request contradicts the current state (the message says which and why)."""
