"""Model files by content, model records in the config store.

Files live under ``root/blobs/sha256/<2 hex>/<64 hex>.onnx``, written to a temporary file and
renamed, so a reader never sees half a file and the same bytes registered twice are stored once.
A write that fails (a full disk is ``InsufficientStorage``, 507; any other write error
``Unavailable``, 503) removes its temporary file and records nothing.
Each model's record (its versions, their digests and signatures: a ``ModelRecord``) is one JSON
document in the store's ``control`` group, key ``model.<name>``, updated with compare-and-swap: two
control-plane replicas registering at once get versions N and N+1, never the same N.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from config_store import ConfigStore, Conflict as StoreConflict

from ..errors import (
    Conflict,
    ControlPlaneError,
    InsufficientStorage,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    Unavailable,
)
from ..schema import ModelInfo, ModelRecord, ModelVersion, Signature, TensorSpec

__all__ = [
    "MAX_MODEL_BYTES",
    "Model",
    "ModelRepository",
    "ModelVersion",
    "storage_error",
    "validate_name",
]

GROUP: Final = "control"
MAX_MODEL_BYTES: Final = 2 * 1024**3  # ONNX's protobuf limit: larger models use external data
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_CAS_ATTEMPTS: Final = 20
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


def validate_name(name: object) -> str:
    """A model name: 1-63 of ``a-z 0-9 -``, starting and ending alphanumeric (a DNS label, so
    that services and Kubernetes objects can be named after it).

    Raises:
        InvalidRequest: the name is not of that form.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidRequest(
            f"model name {name!r} is invalid: expected 1-63 characters of a-z, 0-9 and '-', "
            "starting and ending with a letter or digit",
            {"name": name},
        )
    return name


Model = ModelInfo
"""A model and its versions, oldest first."""


def _signature(path: Path, shown_as: str) -> Signature:
    """Inputs and outputs with OIP datatypes, read from the graph; errors name ``shown_as`` (what
    the user registered), not the content-addressed file."""
    from blade import BladeError
    from blade._model import inspect_model
    from eas_client import datatype_of

    try:
        info = inspect_model(path, shown_as=shown_as)
    except BladeError as exc:
        raise InvalidRequest(str(exc)) from exc

    def tensors(items: Iterable[Any]) -> list[TensorSpec]:
        return [
            TensorSpec(name=t.name, datatype=datatype_of(t.dtype), shape=tuple(t.shape))
            for t in items
        ]

    return Signature(inputs=tensors(info.inputs), outputs=tensors(info.outputs))


class ModelRepository:
    """Registered models: files by digest under ``root``, records in ``store``.

    Args:
        root: the repository directory (created when missing).
        store: the config store holding the records.
        is_deployed: tells whether a version is deployed (deletion is refused then); the control
            plane passes its deployment service's check.
    """

    def __init__(
        self,
        root: str | Path,
        store: ConfigStore,
        is_deployed: Callable[[str, str], bool] | None = None,
    ):
        self.root = Path(root)
        self.store = store
        self._is_deployed = is_deployed or (lambda name, version: False)
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)

    # -- files ----------------------------------------------------------------------------

    def _blob(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest[:2] / f"{digest}.onnx"

    def _store_bytes(self, data: bytes) -> tuple[str, Path]:
        if not data:
            raise InvalidRequest("the model file is empty")
        if len(data) > MAX_MODEL_BYTES:
            raise PayloadTooLarge(
                f"the model file has {len(data)} bytes, more than {MAX_MODEL_BYTES}",
                {"size": len(data), "limit": MAX_MODEL_BYTES},
            )
        digest = hashlib.sha256(data).hexdigest()
        path = self._blob(digest)
        if not path.exists():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
            except OSError as exc:
                raise storage_error(exc, f"the model file ({len(data)} bytes)") from exc
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())  # ENOSPC can wait for the flush; it must come now
                os.replace(tmp, path)
            except BaseException as exc:
                Path(tmp).unlink(missing_ok=True)
                if isinstance(exc, OSError):
                    raise storage_error(exc, f"the model file ({len(data)} bytes)") from exc
                raise
        return digest, path

    @staticmethod
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

    # -- records --------------------------------------------------------------------------

    def _record(self, name: str) -> tuple[ModelRecord, int | None]:
        item = self.store.get(f"model.{name}", group=GROUP)
        if item is None:
            return ModelRecord(name=name), None
        return ModelRecord.model_validate_json(item.content), item.revision

    def _publish(self, record: ModelRecord, revision: int | None) -> bool:
        """Write the record by compare-and-swap; False when it changed meanwhile."""
        try:
            self.store.publish(
                f"model.{record.name}",
                record.model_dump_json().encode(),
                group=GROUP,
                expected_revision=revision or 0,
            )
        except StoreConflict:
            return False
        return True

    def register(self, name: str, data: bytes | Path, *, source: str | None = None) -> ModelVersion:
        """Store a model file and record it as the model's next version.

        Args:
            name: the model name (created on first registration).
            data: the ONNX file's bytes, or its path.
            source: where it came from, for the record (default: the path, or "upload").

        Raises:
            InvalidRequest: a bad name, an empty or unreadable file, not an ONNX model.
            PayloadTooLarge: a file over ``MAX_MODEL_BYTES``.
            InsufficientStorage: no room for the file in ``root`` (nothing is left of it).
            Unavailable: ``root`` cannot be written, or the store cannot be reached.
        """
        validate_name(name)
        if isinstance(data, Path):
            file = data
            source = source or str(file)
            try:
                data = file.read_bytes()
            except OSError as exc:
                raise InvalidRequest(f"cannot read {file}: {exc.strerror}") from exc
        digest, path = self._store_bytes(data)
        signature = _signature(path, source or "the uploaded file")
        for _ in range(_CAS_ATTEMPTS):
            record, revision = self._record(name)
            # Numbers are never reused, not even those of deleted versions: a number may still be
            # in a published route table's history.
            number = record.next
            version = ModelVersion(
                name=name,
                version=str(number),
                sha256=digest,
                size=len(data),
                signature=signature,
                source=source or "upload",
                created=time.time(),
                path=str(path),
            )
            updated = record.model_copy(
                update={"next": number + 1, "versions": [*record.versions, version]}
            )
            if self._publish(updated, revision):
                return version
            # another replica registered meanwhile: take the next number
        raise Conflict(f"model {name!r} kept changing while registering; try again")

    def models(self) -> list[Model]:
        """Every registered model, by name."""
        names = [k.removeprefix("model.") for k in self.store.keys(GROUP) if k.startswith("model.")]
        return [self.model(n) for n in sorted(names)]

    def model(self, name: str) -> Model:
        """A model and its versions.

        Raises:
            NotFound: no such model.
        """
        return self._model(name)[0]

    def _model(self, name: str) -> tuple[Model, bool]:
        """The model, and whether it was read from a local copy while the store is unreachable."""
        item = self.store.get(f"model.{validate_name(name)}", group=GROUP)
        if item is None:
            raise NotFound(f"model {name!r} is not registered", {"name": name})
        record = ModelRecord.model_validate_json(item.content)
        return ModelInfo(name=name, versions=tuple(record.versions)), item.stale

    def version(self, name: str, version: str) -> ModelVersion:
        """One version of a model.

        Raises:
            NotFound: no such model or version (the message lists the versions).
            Unavailable: the store is unreachable and the local copy lacks the version.
        """
        model, stale = self._model(name)
        for v in model.versions:
            if v.version == version:
                return v
        have = [v.version for v in model.versions]
        if stale:  # a local copy from before the outage: it may lack a newer version
            raise Unavailable(
                f"the config store is unreachable and the local copy of {name!r} has no "
                f"version {version!r}; retry when the store is back",
                {"name": name, "version": version, "versions": have},
            )
        raise NotFound(
            f"model {name!r} has no version {version!r}; versions: {have}",
            {"name": name, "version": version, "versions": have},
        )

    def delete(self, name: str, version: str) -> None:
        """Forget a version (its file stays while another version shares the digest; the model
        stays, with its version counter, when its last version goes).

        Raises:
            NotFound: no such model or version.
            Conflict: the version is deployed.
        """
        target = self.version(name, version)
        if self._is_deployed(name, version):
            raise Conflict(
                f"model {name!r} version {version!r} is deployed: undeploy it first",
                {"name": name, "version": version},
            )
        for _ in range(_CAS_ATTEMPTS):
            record, revision = self._record(name)
            kept = [v for v in record.versions if v.version != version]
            if self._publish(record.model_copy(update={"versions": kept}), revision):
                break
        else:
            raise Conflict(f"model {name!r} kept changing while deleting; try again")
        if not any(v.sha256 == target.sha256 for m in self.models() for v in m.versions):
            Path(target.path).unlink(missing_ok=True)
