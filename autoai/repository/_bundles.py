"""Bundle files for the repository: unpacked or copied safely into a staging directory, found,
digested. No records, no validation of the content (``_repository`` does both).

A bundle arrives as an archive (``.tar.gz``, ``.tgz``, ``.tar``, ``.zip``: recognized by its
first bytes, or by its name when those are not an archive's), a directory on the control plane's
host, or several uploaded parts (model, tokenizer, labels, pipeline spec). Whatever the form,
only regular files and directories are taken: absolute names, ``..``, links and special files are
refused, as are more files or more bytes than ``BundleLimits`` allows (counted as the bytes are
written, never trusted from an archive's headers). The files may sit at the top level or in one
folder. Reading errors are the sender's (``InvalidRequest``, 400); writing errors the
repository's (``storage_error``: 507 for no room, else 503).

A bundle's digest is the SHA-256 of its manifest, ``{relative path: file SHA-256}`` as canonical
JSON (keys sorted, no spaces): the same files give the same digest, whatever the archive format,
order or timestamps.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Final, Literal

from ..errors import InvalidRequest, PayloadTooLarge
from ._storage import storage_error

__all__ = [
    "ARCHIVE_SUFFIXES",
    "MAX_BUNDLE_BYTES",
    "MAX_BUNDLE_FILES",
    "PARTS",
    "BundleLimits",
    "archive_kind",
    "bundle_digest",
    "copy_tree",
    "find_root",
    "manifest",
    "unpack",
    "write_parts",
]

ARCHIVE_SUFFIXES: Final = (".tar.gz", ".tgz", ".tar", ".zip")
MAX_BUNDLE_BYTES: Final = 3 * 1024**3
MAX_BUNDLE_FILES: Final = 1000
PARTS: Final = ("model", "tokenizer", "labels", "pipeline")
"""The parts of a bundle uploaded as several files (``labels`` only for classify and slots)."""
_CHUNK: Final = 1 << 20
_SPEC: Final = "pipeline.json"

Archive = Literal["tar", "zip"]


@dataclass(frozen=True)
class BundleLimits:
    """How much one bundle may hold.

    Attributes:
        max_bytes: all its files together.
        max_files: how many files.
        max_file_bytes: one file (ONNX's protobuf limit by default).
    """

    max_bytes: int = MAX_BUNDLE_BYTES
    max_files: int = MAX_BUNDLE_FILES
    max_file_bytes: int = 2 * 1024**3


@dataclass
class _Budget:
    """What is left of the limits while files are written."""

    limits: BundleLimits
    shown_as: str
    files: int = 0
    total: int = 0
    names: set[str] = field(default_factory=set)

    def file(self, name: str) -> None:
        if name in self.names:
            raise InvalidRequest(f"{self.shown_as} holds {name!r} twice", {"file": name})
        self.names.add(name)
        self.files += 1
        if self.files > self.limits.max_files:
            raise PayloadTooLarge(
                f"{self.shown_as} holds more than {self.limits.max_files} files",
                {"limit": self.limits.max_files},
            )

    def take(self, name: str, written: int, size: int) -> None:
        self.total += size
        if written > self.limits.max_file_bytes:
            raise PayloadTooLarge(
                f"{name!r} in {self.shown_as} is larger than {self.limits.max_file_bytes} bytes",
                {"file": name, "limit": self.limits.max_file_bytes},
            )
        if self.total > self.limits.max_bytes:
            raise PayloadTooLarge(
                f"{self.shown_as} is larger than {self.limits.max_bytes} bytes (all files "
                "together)",
                {"limit": self.limits.max_bytes},
            )


def archive_kind(head: bytes, name: str = "") -> Archive | None:
    """The archive format of a file from its first 512 bytes (or, when they are no archive's,
    from an archive suffix of its ``name``); None: not an archive (an ONNX model)."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"\x1f\x8b") or head[257:262] == b"ustar":
        return "tar"
    lowered = name.lower()
    if lowered.endswith(".zip"):
        return "zip"
    if lowered.endswith(ARCHIVE_SUFFIXES):
        return "tar"
    return None


def _safe_name(name: str, shown_as: str) -> str:
    """A member's path relative to the bundle, or ``InvalidRequest`` when it could leave it."""
    path = PurePosixPath(name)
    if (
        not name
        or path.is_absolute()
        or ".." in path.parts
        or "\\" in name
        or "\x00" in name
        or not path.parts
    ):
        raise InvalidRequest(
            f"{shown_as} holds {name!r}: entries must be relative paths without '..'",
            {"file": name},
        )
    return path.as_posix()


def _copy(read: Callable[[int], bytes], into: Path, name: str, budget: _Budget) -> None:
    """Stream one file into the staging directory, within the budget, fsynced (a full disk
    must show now, not on a later flush)."""
    target = into / name
    budget.file(name)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        out = target.open("xb")
    except FileExistsError as exc:
        raise InvalidRequest(f"{budget.shown_as} holds {name!r} twice", {"file": name}) from exc
    except OSError as exc:
        raise storage_error(exc, f"{name} of {budget.shown_as}") from exc
    with out:
        written = 0
        while True:
            try:
                chunk = read(_CHUNK)
            except (OSError, EOFError, zlib.error, tarfile.TarError, zipfile.BadZipFile) as exc:
                raise InvalidRequest(f"cannot read {name!r} of {budget.shown_as}: {exc}") from exc
            if not chunk:
                break
            written += len(chunk)
            budget.take(name, written, len(chunk))
            try:
                out.write(chunk)
            except OSError as exc:
                raise storage_error(exc, f"{name} of {budget.shown_as}") from exc
        try:
            out.flush()
            os.fsync(out.fileno())
        except OSError as exc:
            raise storage_error(exc, f"{name} of {budget.shown_as}") from exc


def _top(name: str) -> bool:
    """The archive's own top directory (``.`` or ``./``, as ``tar -C DIR -czf x.tgz .`` writes)."""
    return not PurePosixPath(name).parts and name.strip() in (".", "./")


def _tar_members(tar: tarfile.TarFile, shown_as: str) -> Iterator[tuple[str, IO[bytes] | None]]:
    for member in tar:
        if member.isdir() and _top(member.name):
            continue
        name = _safe_name(member.name, shown_as)
        if member.isdir():
            yield name, None
            continue
        if not member.isfile():
            what = "a link" if member.issym() or member.islnk() else "not a regular file"
            raise InvalidRequest(
                f"{shown_as} holds {member.name!r}, {what}: bundles take regular files only",
                {"file": member.name},
            )
        reader = tar.extractfile(member)
        assert reader is not None  # a regular file always has one
        yield name, reader


def _zip_members(archive: zipfile.ZipFile, shown_as: str) -> Iterator[tuple[str, IO[bytes] | None]]:
    for info in archive.infolist():
        if info.is_dir() and _top(info.filename):
            continue
        name = _safe_name(info.filename, shown_as)
        mode = info.external_attr >> 16
        if info.is_dir():
            yield name, None
            continue
        if mode and not stat.S_ISREG(mode):
            what = "a link" if stat.S_ISLNK(mode) else "not a regular file"
            raise InvalidRequest(
                f"{shown_as} holds {info.filename!r}, {what}: bundles take regular files only",
                {"file": info.filename},
            )
        with archive.open(info) as reader:
            yield name, reader


def unpack(
    data: bytes | Path, kind: Archive, into: Path, shown_as: str, limits: BundleLimits
) -> None:
    """Unpack an archive (its bytes, or its path) into ``into``.

    Raises:
        InvalidRequest: not a readable archive of that kind, an unsafe name, a link.
        PayloadTooLarge: over ``limits``.
        InsufficientStorage, Unavailable: ``into`` cannot be written.
    """
    budget = _Budget(limits, shown_as)
    source: IO[bytes] | str = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    try:
        if kind == "zip":
            with zipfile.ZipFile(source) as archive:
                for name, reader in _zip_members(archive, shown_as):
                    _place(name, reader, into, budget)
        else:
            opened = (
                tarfile.open(fileobj=source, mode="r:*")
                if not isinstance(source, str)
                else tarfile.open(source, mode="r:*")
            )
            with opened as tar:
                for name, reader in _tar_members(tar, shown_as):
                    _place(name, reader, into, budget)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise InvalidRequest(f"{shown_as} is not a readable {kind} archive: {exc}") from exc
    except OSError as exc:  # a corrupt gzip stream (BadGzipFile), an unreadable path
        raise InvalidRequest(f"{shown_as} is not a readable {kind} archive: {exc}") from exc


def _place(name: str, reader: IO[bytes] | None, into: Path, budget: _Budget) -> None:
    if reader is None:
        try:
            (into / name).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error(exc, f"{name} of {budget.shown_as}") from exc
        return
    _copy(reader.read, into, name, budget)


def copy_tree(source: Path, into: Path, limits: BundleLimits) -> None:
    """Copy a bundle directory on this host into ``into``: regular files and directories only.

    Raises:
        InvalidRequest: a link or special file in it, or it cannot be read.
        PayloadTooLarge: over ``limits``.
        InsufficientStorage, Unavailable: ``into`` cannot be written.
    """
    shown_as = str(source)
    budget = _Budget(limits, shown_as)

    def refuse_walk(exc: OSError) -> None:
        raise InvalidRequest(f"cannot read {shown_as}: {exc.strerror}") from exc

    for folder, dirs, files in os.walk(source, onerror=refuse_walk):
        for entry in [*dirs, *files]:
            path = Path(folder, entry)
            name = path.relative_to(source).as_posix()
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode) or not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                what = "a link" if stat.S_ISLNK(mode) else "not a regular file"
                raise InvalidRequest(
                    f"{path} is {what}: bundles take regular files only", {"file": name}
                )
        for entry in files:
            path = Path(folder, entry)
            name = path.relative_to(source).as_posix()
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError as exc:
                raise InvalidRequest(f"cannot read {path}: {exc.strerror}") from exc
            with os.fdopen(fd, "rb") as reader:
                _copy(reader.read, into, name, budget)
    if budget.files == 0:
        raise InvalidRequest(f"{shown_as} holds no files: expected a bundle ({_SPEC} and more)")


def write_parts(
    parts: Mapping[str, tuple[str, bytes]], into: Path, shown_as: str, limits: BundleLimits
) -> None:
    """Write uploaded parts as the bundle's files: ``{part: (file name in the bundle, bytes)}``.

    Raises:
        PayloadTooLarge: over ``limits``.
        InsufficientStorage, Unavailable: ``into`` cannot be written.
    """
    budget = _Budget(limits, shown_as)
    for name, data in parts.values():
        _copy(io.BytesIO(data).read, into, _safe_name(name, shown_as), budget)


def find_root(staging: Path, shown_as: str) -> Path:
    """The bundle in what was unpacked: its top level, or its one folder, holding
    ``pipeline.json``.

    Raises:
        InvalidRequest: neither holds ``pipeline.json``.
    """
    if (staging / _SPEC).is_file():
        return staging
    entries = sorted(staging.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / _SPEC).is_file():
        return entries[0]
    found = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
    raise InvalidRequest(
        f"{shown_as} is not a bundle: no {_SPEC} at its top level or in its one folder "
        f"(expected {_SPEC}, the model, tokenizer.json and, for classify and slots, "
        f"labels.txt); it holds {found[:10]}{' ...' if len(found) > 10 else ''}",
        {"files": found[:100]},
    )


def manifest(root: Path) -> dict[str, str]:
    """``{path relative to root: SHA-256}`` of every file of a bundle, sorted by path."""
    files: dict[str, str] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        files[path.relative_to(root).as_posix()] = digest.hexdigest()
    return files


def bundle_digest(files: Mapping[str, str]) -> str:
    """The bundle's digest: SHA-256 of its manifest as canonical JSON."""
    canonical = json.dumps(dict(files), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
