"""A model repository on disk, Triton's layout; pure apart from reading the directory.

``DIR/{name}/{version}/model.onnx`` (the ``onnx`` processor), ``DIR/{name}/{version}/`` holding a
bundle (``pipeline.json``: the ``pipeline`` processor) or a blade artifact (``blade.json``: the
``blade`` processor), and optionally an EAS service JSON per
model, ``DIR/{name}/config.json``, with the same keys as ``eas-server --config``. A load may bring
its own service JSON instead (the repository API's ``parameters.config``); one with
``model_path`` names the model anywhere on the host, which is how the control plane places
versions that are not in the directory.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._settings import service_fields

__all__ = ["ModelSource", "default_processor", "list_models", "resolve"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_CONFIG = "config.json"
_ONNX = "model.onnx"
_BLADE = "blade.json"
_PIPELINE = "pipeline.json"  # eas_server.pipeline.BUNDLE_SPEC
_GENERATION = "generation.json"  # eas_server.generation._spec.GENERATION_SPEC


class LayoutError(ValueError):
    """A model cannot be found or described from the repository (the message says what)."""


@dataclass(frozen=True)
class ModelSource:
    """One model version to load: where it is, with which processor, and its settings.

    Attributes:
        name, version: what clients address.
        path: the ``.onnx`` file, bundle directory or blade artifact directory.
        processor: ``onnx``, ``pipeline``, ``blade`` or another registered processor.
        fields: settings from its service JSON (``eas_server._settings.service_fields``).
    """

    name: str
    version: str
    path: Path
    processor: str
    fields: dict[str, Any] = field(default_factory=dict)


def version_key(version: str) -> tuple[int, int | str]:
    """Versions in order: numbers by value, after names (Triton's latest is the highest)."""
    return (1, int(version)) if version.isdigit() else (0, version)


def _versions(model_dir: Path) -> list[str]:
    """The version directories of one model, oldest first (numbers by value, then names)."""
    found = [p.name for p in model_dir.iterdir() if p.is_dir() and _NAME.match(p.name)]
    return sorted(found, key=version_key)


def list_models(root: Path) -> dict[str, list[str]]:
    """Every model of the repository with its versions, oldest first (models without a version
    directory are listed with none)."""
    if not root.is_dir():
        return {}
    return {
        p.name: _versions(p)
        for p in sorted(root.iterdir())
        if p.is_dir() and _NAME.match(p.name) and not p.name.startswith(".")
    }


def check_name(name: str, what: str = "model name") -> None:
    """Raises LayoutError unless ``name`` can name a model or version (and a directory)."""
    if not _NAME.match(name) or name in (".", ".."):
        raise LayoutError(
            f"{what} {name!r} is not valid: letters, digits, '_', '.', '-', at most 128, "
            "starting with a letter or digit"
        )


def _config_fields(text: str, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise LayoutError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise LayoutError(f"{where} must be a JSON object (an EAS service JSON)")
    try:
        return service_fields(doc, where)
    except ValueError as exc:
        raise LayoutError(str(exc)) from None


def default_processor(path: Path) -> str:
    """The processor a model path implies: ``pipeline`` for a bundle (a directory with
    ``pipeline.json``), ``seq2seq`` for a generation bundle (``generation.json``), ``blade`` for a
    blade artifact directory, else ``onnx``."""
    if (path.is_dir() and (path / _PIPELINE).is_file()) or path.name == _PIPELINE:
        return "pipeline"
    if (path.is_dir() and (path / _GENERATION).is_file()) or path.name == _GENERATION:
        root = path if path.is_dir() else path.parent
        return "blade" if (root / _BLADE).is_file() else "seq2seq"  # blade's derived bundle
    if path.is_dir() and (path / _BLADE).is_file():
        return "blade"
    return "onnx"


def resolve(root: Path | None, name: str, config: str | None = None) -> ModelSource:
    """Where model ``name`` is and how to serve it.

    Args:
        root: the repository directory (None: only ``config`` with ``model_path`` can say).
        name: the model.
        config: a service JSON given with the load (replaces ``DIR/{name}/config.json``).

    Raises:
        LayoutError: invalid name or config; no such model, version or model file.
    """
    check_name(name)
    model_dir = root / name if root is not None else None
    if config is not None:
        fields = _config_fields(config, "the load's config")
    elif model_dir is not None and (model_dir / _CONFIG).is_file():
        fields = _config_fields((model_dir / _CONFIG).read_text(), str(model_dir / _CONFIG))
    else:
        fields = {}
    if fields.get("name", name) != name:
        raise LayoutError(f"the config names model {fields['name']!r}, not {name!r}")
    version = fields.get("version")
    if version is not None and not isinstance(version, (str, int)):
        raise LayoutError(f"version must be a string or an integer, got {version!r}")
    explicit = fields.get("model")
    if explicit:
        path = Path(str(explicit))
        if not path.exists():
            raise LayoutError(f"model_path {path} does not exist")
        version = str(version) if version is not None else "1"
    else:
        if model_dir is None or not model_dir.is_dir():
            where = f"in {root}" if root is not None else "(no --model-repository)"
            raise LayoutError(f"no model {name!r} {where}, and the config has no model_path")
        versions = _versions(model_dir)
        if version is None:
            if not versions:
                raise LayoutError(f"model {name!r} has no version directory in {model_dir}")
            version = versions[-1]
        version = str(version)
        if version not in versions:
            raise LayoutError(f"model {name!r} has no version {version} in {model_dir}")
        path = model_dir / version
        if (path / _PIPELINE).is_file() or (path / _GENERATION).is_file():
            pass  # a bundle (its model.onnx is the pipeline's inner model: checked first)
        elif (path / _BLADE).is_file():
            pass  # a blade artifact (it holds a model.onnx of its own: checked first)
        elif (path / _ONNX).is_file():
            path = path / _ONNX
        else:
            raise LayoutError(
                f"{path} holds neither {_ONNX} nor a blade artifact ({_BLADE}) nor a bundle "
                f"({_PIPELINE} or {_GENERATION})"
            )
    check_name(version, "version")
    processor = str(fields.get("processor") or default_processor(path))
    rest = {k: v for k, v in fields.items() if k not in ("model", "name", "version", "processor")}
    return ModelSource(name, version, path, processor, rest)
