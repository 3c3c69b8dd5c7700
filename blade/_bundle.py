"""Pipeline bundles in and out of the optimizer.

A bundle (``eas_server.pipeline``: ``pipeline.json``, ``tokenizer.json``, ``labels.txt``, the
model) is optimized through its model file; what comes out is a DERIVED bundle, servable by
eas-server's ``pipeline`` processor with the blade runtime inside:
```
OUT/
  pipeline.json    the source spec with "model": "blade"
  tokenizer.json   copied (whatever path the spec names)
  labels.txt       copied (when the spec has labels)
  blade/           the blade artifact (blade.json, model.onnx, reference.npz, report.*)
```
The whole directory is assembled beside ``OUT`` and moved in place at the end, so a reader never
sees a derived bundle without its artifact.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._artifact import replace_dir
from ._errors import InvalidModel

if TYPE_CHECKING:
    from eas_server.pipeline import Bundle

__all__ = ["ARTIFACT_DIR", "SourceBundle", "is_bundle", "open_bundle"]

ARTIFACT_DIR = "blade"
"""The derived bundle's artifact directory, named by its ``pipeline.json`` ``model``."""


BUNDLE_SPEC = "pipeline.json"
"""``eas_server.pipeline.BUNDLE_SPEC``, repeated so that telling a bundle from an ONNX file does
not import the pipeline package (and ``tokenizers``) for every plain model."""


def is_bundle(path: str | Path) -> bool:
    """A directory holding ``pipeline.json`` (as ``eas_server.pipeline.is_bundle``)."""
    return Path(path).is_dir() and (Path(path) / BUNDLE_SPEC).is_file()


@dataclass(frozen=True)
class SourceBundle:
    """A bundle to optimize: ``bundle`` is the loaded bundle (spec, tokenizer, labels, model
    path); ``files`` are what a derived bundle copies of it, ``sha256`` their digest with the
    spec's (the artifact cache key takes it: a task verdict depends on how text is tokenized and
    what the labels are)."""

    bundle: Bundle

    @property
    def root(self) -> Path:
        return self.bundle.root

    @property
    def files(self) -> tuple[str, ...]:
        spec = self.bundle.spec
        return (spec.tokenizer,) + ((spec.labels,) if spec.labels else ())

    @property
    def sha256(self) -> str:
        h = hashlib.sha256()
        for name in (BUNDLE_SPEC, *self.files):
            h.update(name.encode() + b"\0")
            h.update((self.root / name).read_bytes())
        return h.hexdigest()

    def key(self) -> dict[str, Any]:
        return {"bundle_sha256": self.sha256}

    def default_output(self) -> Path:
        """``<bundle>.blade`` beside the bundle (never inside it)."""
        return self.root.with_name(self.root.name + ".blade")

    def staging(self, out_dir: Path) -> Path:
        """An empty directory beside ``out_dir`` to assemble the derived bundle in."""
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".blade-bundle-", dir=out_dir.parent))

    def finish(self, staging: Path, out_dir: Path) -> None:
        """Copy the tokenizer and labels, write ``pipeline.json`` naming the artifact, and move
        the staged bundle (its ``blade/`` already written) to ``out_dir``."""
        from eas_server.pipeline import spec_json

        for name in self.files:
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.root / name, target)
        spec = self.bundle.spec.model_copy(update={"model": ARTIFACT_DIR})
        (staging / BUNDLE_SPEC).write_text(spec_json(spec))
        replace_dir(staging, out_dir)


def open_bundle(path: str | Path) -> SourceBundle:
    """Load a bundle to optimize.

    Raises:
        InvalidModel: the bundle does not load (bad spec, tokenizer, labels), or it is a derived
            bundle already (its model is a blade artifact, not an ONNX file).
    """
    from eas_server.pipeline import BundleError, load_bundle

    try:
        bundle = load_bundle(Path(path))
    except BundleError as exc:
        raise InvalidModel(f"{path} is not a bundle blade can optimize: {exc}") from exc
    if bundle.is_blade:
        raise InvalidModel(
            f"{path} is already optimized (its model {bundle.spec.model!r} is a blade artifact "
            "directory); optimize the source bundle, whose model is an ONNX file"
        )
    return SourceBundle(bundle)
