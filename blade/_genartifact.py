"""Generation bundles in and out of the optimizer: the source bundle, the derived bundle blade
writes, and its load-time check.

```
OUT/
  generation.json   copied from the source
  tokenizer.json    copied when the source has one
  encoder.onnx      the chosen encoder (the source's when nothing beat it)
  decoder.onnx      the chosen decoder step, the contract's inputs and outputs (so eas-server's
                    seq2seq processor serves it too, with caches in host memory)
  blade.json        how to run them: Seq2SeqConfig, tiers, the generation gate, digests
  reference.npz     two clips' features, the reference's answers fed back (targets) and its
                    teacher-forced logits: re-verified when the bundle is loaded
  report.json       every pass of both stages: gates, figures, verdicts, timings
  report.txt        the same, as tables
```
The directory is assembled beside ``OUT`` and renamed into place, so a reader never sees half of
one; a cached copy is reused when the inputs that decide the outcome are the same.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eas_server.generation._spec import (
    DECODER_FILE,
    ENCODER_FILE,
    GENERATION_SPEC,
    TOKENIZER_FILE,
    GenerationError,
    GenerationSpec,
    read_spec,
)

from ._artifact import ARTIFACT_FORMAT, default_cache_dir, replace_dir
from ._errors import InvalidModel
from ._genverify import GenerationGate, check_generation, teacher_forced
from ._seq2seq import Seq2SeqConfig

__all__ = [
    "BLADE_FILE",
    "GenerationArtifact",
    "GenerationSource",
    "is_derived_generation",
    "is_generation_bundle",
    "open_generation",
    "store",
]

BLADE_FILE = "blade.json"
KIND = "generation"
REFERENCE_CLIPS = 2
REFERENCE_PREDICTIONS = 8


def is_generation_bundle(path: str | Path) -> bool:
    """A directory holding ``generation.json``."""
    return Path(path).is_dir() and (Path(path) / GENERATION_SPEC).is_file()


def is_derived_generation(path: str | Path) -> bool:
    """A generation bundle that blade wrote (its ``blade.json`` beside ``generation.json``)."""
    return is_generation_bundle(path) and (Path(path) / BLADE_FILE).is_file()


@dataclass(frozen=True)
class GenerationSource:
    """A generation bundle to optimize."""

    root: Path
    spec: GenerationSpec

    @property
    def encoder(self) -> Path:
        return self.root / ENCODER_FILE

    @property
    def decoder(self) -> Path:
        return self.root / DECODER_FILE

    @property
    def files(self) -> tuple[str, ...]:
        """What decides the outcome and is copied or replaced: spec, models, tokenizer."""
        names = (GENERATION_SPEC, ENCODER_FILE, DECODER_FILE, TOKENIZER_FILE)
        return tuple(n for n in names if (self.root / n).is_file())

    def sha256(self) -> str:
        h = hashlib.sha256()
        for name in self.files:
            h.update(name.encode() + b"\0")
            with (self.root / name).open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        return h.hexdigest()

    def default_output(self) -> Path:
        return self.root.with_name(self.root.name + ".blade")


def open_generation(path: str | Path) -> GenerationSource:
    """A generation bundle to optimize.

    Raises:
        InvalidModel: no valid ``generation.json``, a missing model file, or a bundle blade
            derived already.
    """
    root = Path(path)
    try:
        spec = read_spec(root)
    except GenerationError as exc:
        raise InvalidModel(str(exc)) from None
    for name in (ENCODER_FILE, DECODER_FILE):
        if not (root / name).is_file():
            raise InvalidModel(f"the generation bundle {root} has no {name}")
    if is_derived_generation(root):
        raise InvalidModel(
            f"{root} is already optimized (blade wrote it: {BLADE_FILE} beside "
            f"{GENERATION_SPEC}); optimize the source bundle"
        )
    return GenerationSource(root, spec)


def write_files(
    staging: Path,
    source: GenerationSource,
    encoder: Path,
    decoder: Path,
    doc: Mapping[str, Any],
    reference: Mapping[str, np.ndarray],
    report: Mapping[str, Any],
    text: str,
) -> None:
    """Fill ``staging`` with a derived bundle (see the module docstring)."""
    shutil.copyfile(source.root / GENERATION_SPEC, staging / GENERATION_SPEC)
    if (source.root / TOKENIZER_FILE).is_file():
        shutil.copyfile(source.root / TOKENIZER_FILE, staging / TOKENIZER_FILE)
    shutil.copyfile(encoder, staging / ENCODER_FILE)
    shutil.copyfile(decoder, staging / DECODER_FILE)
    (staging / BLADE_FILE).write_text(json.dumps({**doc, "format": ARTIFACT_FORMAT}, indent=2))
    np.savez(staging / "reference.npz", **reference)  # type: ignore[arg-type]
    (staging / "report.json").write_text(json.dumps(report, indent=2, default=float))
    (staging / "report.txt").write_text(text + "\n")


def staging_dir(out_dir: Path) -> Path:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".blade-generation-", dir=out_dir.parent))


def store(staging: Path, out_dir: Path, key: str, cache_dir: str | Path | None) -> None:
    """Keep a copy of the staged bundle in the cache, then move it to ``out_dir``."""
    entry = Path(cache_dir or default_cache_dir()) / key
    if not entry.exists():
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(entry.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(staging, tmp)
        tmp.rename(entry)
    replace_dir(staging, out_dir)


class GenerationArtifact:
    """A derived generation bundle, loaded for serving.

    Raises:
        InvalidModel: no readable ``blade.json`` of this format and kind, or no valid spec.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        try:
            self.doc: dict[str, Any] = json.loads((self.root / BLADE_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise InvalidModel(f"{self.root}: no readable {BLADE_FILE}: {exc}") from exc
        if self.doc.get("format") != ARTIFACT_FORMAT or self.doc.get("kind") != KIND:
            raise InvalidModel(
                f"{self.root}/{BLADE_FILE} is not a derived generation bundle of format "
                f"{ARTIFACT_FORMAT} (kind {self.doc.get('kind')!r}, format "
                f"{self.doc.get('format')!r})"
            )
        try:
            self.spec = read_spec(self.root)
        except GenerationError as exc:
            raise InvalidModel(str(exc)) from None
        self.runtime = Seq2SeqConfig.from_json(self.doc["runtime"])
        self.gate = GenerationGate.from_json(self.doc["gate"])
        self.tier: str = self.doc["tier"]
        self.encoder = self.root / ENCODER_FILE
        self.decoder = self.root / DECODER_FILE

    def reference(self) -> dict[str, np.ndarray]:
        with np.load(self.root / "reference.npz") as npz:
            return {k: npz[k] for k in npz.files}

    def verify(self, runtime: Any) -> tuple[bool, str]:
        """Teacher-forced logits of the stored clips through ``runtime`` (a ``BladeSeq2Seq``:
        its encoder, caches and steps) against the stored fp32 reference, under the logits
        part of the bundle's gate."""
        from ._geneval import teacher_force

        ref = self.reference()
        count = int(ref["logits"].shape[1])
        got = teacher_force(runtime, self.spec, ref["features"], ref["targets"], count)
        figures = teacher_forced(ref["logits"], got, [int(n) for n in ref["lengths"]], (count,))
        return check_generation(figures, None, self.gate)
