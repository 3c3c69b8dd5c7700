"""The exception hierarchy of ``blade_aspect``.

```
AspectError
  ├── InvalidDeploySpec     the service spec's processor / blade options are malformed (ValueError)
  ├── NotOptimized          blade was required, and no candidate passed verification and beat plain
  └── InvalidRouteRequest   a publish request's route cannot become a route entry (ValueError)
```
Errors of the optimizer itself (``blade.BladeError``) pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["AspectError", "InvalidDeploySpec", "InvalidRouteRequest", "NotOptimized"]


class AspectError(Exception):
    """Base class of ``blade_aspect``'s errors."""


class InvalidDeploySpec(AspectError, ValueError):
    """The deploy spec's ``processor`` / ``blade`` fields are malformed or contradictory."""


class NotOptimized(AspectError):
    """``blade: {"required": true}`` and the optimizer kept the plain model.

    Attributes:
        report: the optimizer's report (each pass's verdict and why).
    """

    def __init__(self, message: str, report: Mapping[str, Any]):
        super().__init__(message)
        self.report = dict(report)


class InvalidRouteRequest(AspectError, ValueError):
    """A published route is malformed or does not match its deployment."""
