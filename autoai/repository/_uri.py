"""The bytes behind a registration URI: ``file://`` (a regular file, bounded read) or
``http(s)://`` (streamed, bounded); any other scheme is refused."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from ..errors import InvalidRequest

__all__ = ["MAX_MODEL_BYTES", "read_uri"]

MAX_MODEL_BYTES: Final = 2 * 1024**3  # ONNX's protobuf limit: larger models use external data


def read_uri(uri: str, *, timeout: float = 60.0) -> bytes:
    """The bytes behind a ``file://`` or ``http(s)://`` URI.

    Raises:
        InvalidRequest: another scheme, or the file / URL cannot be read.
    """
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise InvalidRequest(f"{uri!r} is not a URI: {exc}", {"uri": uri}) from exc
    if any(not c.isprintable() for c in uri):
        raise InvalidRequest(f"the URI {uri!r} contains control characters", {"uri": uri})
    if parts.scheme == "file":
        path = Path(parts.path)
        try:
            # bounded read, regular files only: /dev/zero or a FIFO would never end
            with path.open("rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    raise InvalidRequest(f"{uri} is not a regular file", {"uri": uri})
                data = f.read(MAX_MODEL_BYTES + 1)
            if len(data) > MAX_MODEL_BYTES:
                raise InvalidRequest(f"{uri} is larger than {MAX_MODEL_BYTES} bytes")
            return data
        except OSError as exc:
            raise InvalidRequest(f"cannot read {uri}: {exc.strerror}", {"uri": uri}) from exc
    if parts.scheme in ("http", "https"):
        import httpx

        try:
            with httpx.stream("GET", uri, timeout=timeout, follow_redirects=True) as answer:
                answer.raise_for_status()
                chunks, size = [], 0
                for chunk in answer.iter_bytes():
                    size += len(chunk)
                    if size > MAX_MODEL_BYTES:
                        raise InvalidRequest(f"{uri} is larger than {MAX_MODEL_BYTES} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise InvalidRequest(f"cannot download {uri}: {exc}", {"uri": uri}) from exc
    raise InvalidRequest(
        f"unsupported URI scheme {parts.scheme!r}: expected file://, http:// or https://",
        {"uri": uri},
    )
