"""Bundles on their way to the control plane: a bundle directory packed as one ``.tar.gz``
upload (the control plane may be on another host, and a directory may hold more than the four
parts, such as a model's external data), and uploads by part.

Packing keeps regular files only and refuses links: the control plane refuses them too, and
saying so here names the file on the caller's own disk.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final

__all__ = ["BUNDLE_PARTS", "pack_bundle", "part_uploads"]

BUNDLE_PARTS: Final = ("model", "tokenizer", "labels", "pipeline")
"""The parts of a bundle uploaded as several files (``labels`` for classify and slots only)."""
_OCTET: Final = "application/octet-stream"


def pack_bundle(directory: Path) -> bytes:
    """A bundle directory as a gzipped tar, its files at the top level.

    Raises:
        ValueError: the directory holds a link or a special file, or no ``pipeline.json``.
        OSError: it cannot be read.
    """
    if not (directory / "pipeline.json").is_file():
        raise ValueError(
            f"{directory} is not a bundle: it has no pipeline.json (expected pipeline.json, "
            "the model, tokenizer.json and, for classify and slots, labels.txt)"
        )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for folder, dirs, files in os.walk(directory):
            dirs.sort()
            for entry in sorted([*dirs, *files]):
                path = Path(folder, entry)
                mode = path.lstat().st_mode
                if stat.S_ISLNK(mode) or not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                    raise ValueError(f"{path} is a link or a special file: bundles take files")
            for entry in sorted(files):
                path = Path(folder, entry)
                tar.add(path, arcname=path.relative_to(directory).as_posix(), recursive=False)
    return buffer.getvalue()


def part_uploads(parts: Mapping[str, Path | bytes]) -> dict[str, tuple[str, bytes, str]]:
    """Multipart file fields for a bundle given by part (``model``, ``tokenizer``, ``labels``,
    ``pipeline``): each a path, or bytes.

    Raises:
        ValueError: an unknown part.
        OSError: a file cannot be read.
    """
    unknown = sorted(set(parts) - set(BUNDLE_PARTS))
    if unknown:
        raise ValueError(f"unknown bundle part(s) {unknown}: expected some of {BUNDLE_PARTS}")
    uploads = {}
    for part, value in parts.items():
        if isinstance(value, Path):
            uploads[part] = (value.name, value.read_bytes(), _OCTET)
        else:
            uploads[part] = (part, bytes(value), _OCTET)
    return uploads
