"""The one exception hierarchy of ``config_store``; callers need a single ``except``.

```
ConfigStoreError
  ├── StoreUnavailable      the backend cannot be reached (ZooKeeper down, database locked)
  ├── StoreClosed           the store was closed by its owner
  ├── NotFound              the key does not exist (``remove``)
  ├── Conflict              compare-and-swap failed: the revision is not the one expected
  ├── ContentTooLarge       content over the limit, refused before it reaches the backend
  ├── PermissionDenied      the credential may not do this (read-only client publishing)
  ├── InvalidUrl            malformed or unsupported store URL            (also a ValueError)
  └── InvalidKey            bad data id, group, service, host or port     (also a ValueError)
```

Backend exceptions (kazoo, sqlite3) are converted once, where they are raised, and chained.
"""

from __future__ import annotations

__all__ = [
    "ConfigStoreError",
    "Conflict",
    "ContentTooLarge",
    "InvalidKey",
    "InvalidUrl",
    "NotFound",
    "PermissionDenied",
    "StoreClosed",
    "StoreUnavailable",
]


class ConfigStoreError(Exception):
    """Base class of every error raised by ``config_store``."""


class StoreUnavailable(ConfigStoreError):
    """The backend cannot be reached now; the operation was not applied (or its outcome is unknown
    and was checked not to have applied)."""


class StoreClosed(ConfigStoreError):
    """The store was closed; open a new one."""


class NotFound(ConfigStoreError):
    """The key does not exist."""


class Conflict(ConfigStoreError):
    """Compare-and-swap failed.

    Attributes:
        expected: the revision the caller expected (0 means "must not exist").
        actual: the revision found, ``None`` when the key does not exist.
    """

    def __init__(self, message: str, *, expected: int | None = None, actual: int | None = None):
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class ContentTooLarge(ConfigStoreError):
    """Content over the size limit.

    Attributes:
        size: the content's size in bytes.
        limit: the largest size accepted.
    """

    def __init__(self, size: int, limit: int):
        super().__init__(f"content is {size} bytes; the limit is {limit} bytes (512 KiB)")
        self.size = size
        self.limit = limit


class PermissionDenied(ConfigStoreError):
    """The store's credential does not allow this operation."""


class InvalidUrl(ConfigStoreError, ValueError):
    """The store URL is malformed or names an unsupported scheme."""


class InvalidKey(ConfigStoreError, ValueError):
    """A data id, group, service name, host or port is not acceptable."""
