"""How one revision is stored as bytes (ZooKeeper node data, snapshot files): a one-line JSON header
with revision, md5 and time, then the content untouched. Pure; no I/O."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from ._errors import ContentTooLarge

__all__ = [
    "MAGIC",
    "MAX_CONTENT_BYTES",
    "Envelope",
    "check_content",
    "content_md5",
    "decode",
    "encode",
]

MAGIC = b"AUTOAI-CFG 1\n"
# Half of ZooKeeper's jute.maxbuffer (1 MiB less a little): the header and the history copy fit.
MAX_CONTENT_BYTES = 512 * 1024


@dataclass(frozen=True, slots=True)
class Envelope:
    revision: int
    md5: str
    modified: float
    content: bytes
    ref: bool = False
    """True when the content is not here but in the revision's history entry (large content)."""


def content_md5(content: bytes) -> str:
    return hashlib.md5(content, usedforsecurity=False).hexdigest()


def check_content(content: object) -> bytes:
    """Return content as bytes; ``str`` is encoded as UTF-8.

    Raises:
        TypeError: not bytes-like or str.
        ContentTooLarge: over ``MAX_CONTENT_BYTES``.
    """
    if isinstance(content, str):
        data = content.encode("utf-8")
    elif isinstance(content, bytes | bytearray | memoryview):
        data = bytes(content)
    else:
        raise TypeError(f"content must be bytes or str, got {type(content).__name__}")
    if len(data) > MAX_CONTENT_BYTES:
        raise ContentTooLarge(len(data), MAX_CONTENT_BYTES)
    return data


def encode(revision: int, md5: str, modified: float, content: bytes, *, ref: bool = False) -> bytes:
    """``ref=True`` writes the header only: the content lives in the history entry."""
    fields: dict[str, object] = {"revision": revision, "md5": md5, "modified": modified}
    if ref:
        fields["ref"] = True
    header = json.dumps(fields, separators=(",", ":"))
    return MAGIC + header.encode("ascii") + b"\n" + (b"" if ref else content)


def decode(data: bytes) -> Envelope:
    """Parse an envelope; the content's MD5 is checked, so a torn or edited node is detected.

    Raises:
        ValueError: not an envelope, a bad header, or content not matching its MD5.
    """
    if not data.startswith(MAGIC):
        raise ValueError("not a config_store envelope (missing header)")
    end = data.find(b"\n", len(MAGIC))
    if end < 0:
        raise ValueError("envelope header is not terminated")
    try:
        header = json.loads(data[len(MAGIC) : end])
        revision = int(header["revision"])
        md5 = str(header["md5"])
        modified = float(header["modified"])
        ref = bool(header.get("ref", False))
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError) as exc:
        raise ValueError(f"bad envelope header: {exc}") from exc
    content = data[end + 1 :]
    if ref:
        if content:
            raise ValueError("reference envelope carries content")
    elif content_md5(content) != md5:
        raise ValueError("envelope content does not match its md5")
    return Envelope(revision, md5, modified, content, ref)
