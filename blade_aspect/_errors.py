"""The exception hierarchy of ``blade_aspect``.

```
AspectError
  ├── InvalidDeploySpec     the service spec's processor / blade options are malformed (ValueError)
  └── InvalidRouteRequest   a publish request's route cannot become a route entry (ValueError)
```
Errors of the optimizer itself (``blade.BladeError``) pass through unchanged.
"""

from __future__ import annotations

__all__ = ["AspectError", "InvalidDeploySpec", "InvalidRouteRequest"]


class AspectError(Exception):
    """Base class of ``blade_aspect``'s errors."""


class InvalidDeploySpec(AspectError, ValueError):
    """The deploy spec's ``processor`` / ``blade`` fields are malformed or contradictory."""


class InvalidRouteRequest(AspectError, ValueError):
    """A published route is malformed or does not match its deployment."""
