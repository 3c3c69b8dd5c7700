"""The exception hierarchy of ``blade_client``; it extends ``eas_client``'s, so that one
``except eas_client.EasClientError`` still catches everything a client raises.

```
eas_client.EasClientError
  └── BladeClientError
        ├── InvalidProfile      a route's blade profile is malformed (a ValueError)
        └── OutsideProfile      the request does not fit the blade profile and the route has no
                                fallback version to send it to (a ValueError)
```
"""

from __future__ import annotations

from eas_client import EasClientError

__all__ = ["BladeClientError", "InvalidProfile", "OutsideProfile"]


class BladeClientError(EasClientError):
    """Base class of the errors raised by ``blade_client`` itself."""


class InvalidProfile(BladeClientError, ValueError):
    """The route's ``blade.profiles`` is not ``{"batch": [min, max], "seq": [min, max]}``."""


class OutsideProfile(BladeClientError, ValueError):
    """The request is outside the blade profile and no fallback route was given."""
