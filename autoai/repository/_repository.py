"""Model files and bundles by content, model records in the config store.

ONNX files live under ``root/blobs/sha256/<2 hex>/<64 hex>.onnx``, written to a temporary file and
renamed, so a reader never sees half a file and the same bytes registered twice are stored once.
Bundles (an archive, a directory, or several uploaded parts: ``_bundles``) are staged in
``root/bundles/staging/``, checked as eas-server will load them (``_inspect``), and renamed to
``root/bundles/sha256/<2 hex>/<digest>/``, the digest being that of their manifest (every file's
SHA-256): the same bundle registered twice is stored once, and a bad one never lands.
A write that fails (a full disk is ``InsufficientStorage``, 507; any other write error
``Unavailable``, 503) removes what it staged and records nothing.
Each model's record (its versions, their digests and signatures: a ``ModelRecord``) is one JSON
document in the store's ``control`` group, key ``model.<name>``, updated with compare-and-swap: two
control-plane replicas registering at once get versions N and N+1, never the same N.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from pydantic import ValidationError

from config_store import ConfigStore, Conflict as StoreConflict

from ..errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge, Unavailable
from ..schema import BundleInfo, ModelInfo, ModelRecord, ModelVersion, Signature
from ._bundles import (
    PARTS,
    BundleLimits,
    archive_kind,
    bundle_digest,
    copy_tree,
    find_root,
    manifest,
    unpack,
    write_parts,
)
from ._inspect import bundle_signature, model_signature
from ._storage import storage_error
from ._uri import MAX_MODEL_BYTES, read_uri

__all__ = [
    "MAX_MODEL_BYTES",
    "Model",
    "ModelRepository",
    "ModelVersion",
    "validate_name",
]

GROUP: Final = "control"
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_CAS_ATTEMPTS: Final = 20


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


class ModelRepository:
    """Registered models: files by digest under ``root``, records in ``store``.

    Args:
        root: the repository directory (created when missing).
        store: the config store holding the records.
        is_deployed: tells whether a version is deployed (deletion is refused then); the control
            plane passes its deployment service's check.
        bundle_limits: how many files and bytes one bundle may hold.
    """

    def __init__(
        self,
        root: str | Path,
        store: ConfigStore,
        is_deployed: Callable[[str, str], bool] | None = None,
        *,
        bundle_limits: BundleLimits | None = None,
    ):
        self.root = Path(root)
        self.store = store
        self._is_deployed = is_deployed or (lambda name, version: False)
        self.bundle_limits = bundle_limits or BundleLimits()
        """How many files and bytes one bundle may hold."""
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

    def _bundle_dir(self, digest: str) -> Path:
        return self.root / "bundles" / "sha256" / digest[:2] / digest

    def _store_bundle(
        self, fill: Callable[[Path], None], shown_as: str
    ) -> tuple[str, Path, int, Signature, BundleInfo]:
        """Stage a bundle (``fill`` writes its files into an empty directory), check it, and
        move it to its content address; returns digest, directory, bytes, external signature
        and ``BundleInfo``. Whatever happens, nothing of the staging is left."""
        staging_root = self.root / "bundles" / "staging"
        try:
            staging_root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=staging_root, prefix="upload-"))
        except OSError as exc:
            raise storage_error(exc, shown_as) from exc
        try:
            fill(staging)
            root = find_root(staging, shown_as)
            files = manifest(root)
            signature, info = bundle_signature(root, files, shown_as)
            digest = bundle_digest(files)
            size = sum((root / name).stat().st_size for name in files)
            final = self._bundle_dir(digest)
            if not final.exists():
                try:
                    final.parent.mkdir(parents=True, exist_ok=True)
                    os.rename(root, final)
                except OSError as exc:
                    if not final.is_dir():  # else: the same bundle, stored meanwhile
                        raise storage_error(exc, shown_as) from exc
            return digest, final, size, signature, info
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    read_uri = staticmethod(read_uri)  # ``_uri.read_uri``, kept where callers found it

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
        """Store a model file or bundle and record it as the model's next version.

        Args:
            name: the model name (created on first registration).
            data: the ONNX file's or a bundle archive's bytes (``.tar.gz``, ``.tgz``, ``.tar``,
                ``.zip``), or its path, or a bundle directory's path.
            source: where it came from, for the record (default: the path, or "upload"); an
                archive suffix in it marks an archive whose first bytes are no archive's.

        Raises:
            InvalidRequest: a bad name, an empty or unreadable file, not an ONNX model; an
                unsafe archive (absolute paths, ``..``, links) or a bundle eas-server could not
                load (no pipeline.json or an invalid one, no tokenizer, labels that do not match
                the model's head, no model).
            PayloadTooLarge: a file over ``MAX_MODEL_BYTES``, a bundle over ``bundle_limits``.
            InsufficientStorage: no room for the file in ``root`` (nothing is left of it).
            Unavailable: ``root`` cannot be written, or the store cannot be reached.
        """
        validate_name(name)
        limits = self.bundle_limits
        if isinstance(data, Path):
            file = data
            source = source or str(file)
            if file.is_dir():
                copy = partial(copy_tree, file, limits=limits)
                return self._register_bundle(name, copy, source)
            try:
                with file.open("rb") as f:
                    head = f.read(512)
            except OSError as exc:
                raise InvalidRequest(f"cannot read {file}: {exc.strerror}") from exc
            kind = archive_kind(head, file.name)
            if kind is not None:
                fill = partial(unpack, file, kind, shown_as=source, limits=limits)
                return self._register_bundle(name, fill, source)
            try:
                data = file.read_bytes()
            except OSError as exc:
                raise InvalidRequest(f"cannot read {file}: {exc.strerror}") from exc
        else:
            kind = archive_kind(data[:512], source or "")
            if kind is not None:
                shown = source or "the uploaded archive"
                fill = partial(unpack, data, kind, shown_as=shown, limits=limits)
                return self._register_bundle(name, fill, source or "upload")
        digest, path = self._store_bytes(data)
        signature = model_signature(path, source or "the uploaded file")
        return self._add_version(
            name, sha256=digest, size=len(data), signature=signature, source=source or "upload",
            path=str(path),
        )  # fmt: skip

    def register_parts(
        self,
        name: str,
        parts: Mapping[str, tuple[str, bytes]],
        *,
        source: str | None = None,
    ) -> ModelVersion:
        """Store a bundle uploaded as several files and record it as the next version.

        Args:
            name: the model name.
            parts: ``{part: (uploaded file name, bytes)}`` for ``model``, ``tokenizer``,
                ``pipeline`` and (classify, slots) ``labels``. Each is stored under the name
                ``pipeline.json`` gives it (``model.onnx``, ``tokenizer.json``, ``labels.txt`` by
                default).
            source: for the record (default: the uploaded file names).

        Raises:
            InvalidRequest: an unknown or missing part, an invalid pipeline spec, labels for a
                task without, or a bundle eas-server could not load (as ``register``).
            PayloadTooLarge, InsufficientStorage, Unavailable: as ``register``.
        """
        from eas_server.pipeline import BUNDLE_SPEC, PipelineSpec

        validate_name(name)
        unknown = sorted(set(parts) - set(PARTS))
        missing = [p for p in ("model", "tokenizer", "pipeline") if p not in parts]
        if unknown or missing:
            raise InvalidRequest(
                f"a bundle in parts takes the files {list(PARTS)} (labels only for classify "
                f"and slots); unknown: {unknown}, missing: {missing}",
                {"unknown": unknown, "missing": missing},
            )
        shown = source or "upload: " + ", ".join(filename for filename, _ in parts.values())
        try:
            spec = PipelineSpec.model_validate_json(parts["pipeline"][1])
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'document'}: {e['msg']}"
                for e in exc.errors()
            )
            raise InvalidRequest(
                f"the pipeline part ({parts['pipeline'][0]}) is not a valid {BUNDLE_SPEC}: "
                f"{problems}",
                {"problems": problems},
            ) from exc
        if "labels" in parts and spec.labels is None:
            raise InvalidRequest(
                f"a label list was given, but {BUNDLE_SPEC} sets labels to null (task "
                f"{spec.task!r}): leave the labels part out, or name the file in the spec"
            )
        names = {"pipeline": BUNDLE_SPEC, "model": spec.model, "tokenizer": spec.tokenizer}
        if spec.labels is not None:
            names["labels"] = spec.labels
        files = {part: (names[part], data) for part, (_, data) in parts.items()}
        fill = partial(write_parts, files, shown_as=shown, limits=self.bundle_limits)
        return self._register_bundle(name, fill, shown)

    def register_uri(self, name: str, uri: str) -> ModelVersion:
        """Register what a URI names: an ONNX file or bundle archive (``file://``,
        ``http(s)://``), or a bundle directory on this host (``file://``).

        Raises:
            InvalidRequest: as ``read_uri`` and ``register``.
            PayloadTooLarge, InsufficientStorage, Unavailable: as ``register``.
        """
        try:
            parts = urlsplit(uri)
        except ValueError:
            parts = None
        if (
            parts is not None
            and parts.scheme == "file"
            and all(c.isprintable() for c in uri)
            and Path(parts.path).is_dir()
        ):
            return self.register(name, Path(parts.path), source=uri)
        return self.register(name, self.read_uri(uri), source=uri)

    def _register_bundle(
        self, name: str, fill: Callable[[Path], None], source: str
    ) -> ModelVersion:
        digest, path, size, signature, info = self._store_bundle(fill, source)
        return self._add_version(
            name, sha256=digest, size=size, signature=signature, source=source, path=str(path),
            bundle=info,
        )  # fmt: skip

    def _add_version(
        self,
        name: str,
        *,
        sha256: str,
        size: int,
        signature: Signature,
        source: str,
        path: str,
        bundle: BundleInfo | None = None,
    ) -> ModelVersion:
        """Record a stored file or bundle as the model's next version (compare-and-swap)."""
        for _ in range(_CAS_ATTEMPTS):
            record, revision = self._record(name)
            # Numbers are never reused, not even those of deleted versions: a number may still be
            # in a published route table's history.
            number = record.next
            version = ModelVersion(
                name=name,
                version=str(number),
                sha256=sha256,
                size=size,
                signature=signature,
                source=source,
                created=time.time(),
                path=path,
                bundle=bundle,
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
        """Forget a version (its file or bundle directory stays while another version shares
        it; the model stays, with its version counter, when its last version goes).

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
        if any(v.path == target.path for m in self.models() for v in m.versions):
            return
        stored = Path(target.path)
        if target.bundle is None:
            stored.unlink(missing_ok=True)
        elif stored.is_relative_to(self.root / "bundles" / "sha256"):
            shutil.rmtree(stored, ignore_errors=True)
