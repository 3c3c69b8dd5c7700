"""The error of a failed write to the repository's disk, shared by model files and bundles."""

from __future__ import annotations

import errno
from typing import Final

from ..errors import ControlPlaneError, InsufficientStorage, Unavailable

__all__ = ["storage_error"]

_NO_ROOM: Final = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def storage_error(exc: OSError, what: str) -> ControlPlaneError:
    """The error for a failed write of ``what``: no room is ``InsufficientStorage`` (507), any
    other failure (read-only, I/O error, permissions) ``Unavailable`` (503)."""
    detail = {"errno": errno.errorcode.get(exc.errno or 0, str(exc.errno)), "what": what}
    if exc.errno in _NO_ROOM:
        return InsufficientStorage(
            f"no room to store {what}: {exc.strerror}; nothing was registered", detail
        )
    return Unavailable(f"cannot store {what}: {exc.strerror}; nothing was registered", detail)
