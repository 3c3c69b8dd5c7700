"""The inputs and outputs of a bundle's model, read without a runtime: the ONNX graph (``onnx``) or
a blade artifact's ``blade.json`` signature. Shapes are full (batch dim first), -1 = dynamic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ._errors import BundleError

__all__ = ["BLADE_JSON", "Shapes", "is_blade_dir", "read_graph"]

BLADE_JSON = "blade.json"
Shapes = dict[str, tuple[int, ...]]


def is_blade_dir(path: Path) -> bool:
    """A blade artifact directory (served by the ``blade`` processor)."""
    return path.is_dir() and (path / BLADE_JSON).is_file()


def _dims(shape: Any) -> tuple[int, ...]:
    dims = []
    for dim in shape.dim:
        value = dim.dim_value if dim.HasField("dim_value") else -1
        dims.append(int(value) if value > 0 else -1)
    return tuple(dims)


def _read_onnx(path: Path) -> tuple[Shapes, Shapes]:
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise BundleError(
            "reading a bundle's model needs onnx: pip install 'autoai[server]'"
        ) from exc
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ...
        raise BundleError(
            f"{path} is not an ONNX model (expected an ONNX ModelProto file): {exc}"
        ) from exc
    graph = model.graph
    weights = {init.name for init in graph.initializer}
    inputs = {t.name: _dims(t.type.tensor_type.shape) for t in graph.input if t.name not in weights}
    outputs = {t.name: _dims(t.type.tensor_type.shape) for t in graph.output}
    return inputs, outputs


def _read_blade(path: Path) -> tuple[Shapes, Shapes]:
    where = path / BLADE_JSON
    try:
        doc = json.loads(where.read_text(encoding="utf-8"))
        signature = doc["signature"]
        inputs = {str(t["name"]): tuple(int(d) for d in t["shape"]) for t in signature["inputs"]}
        outputs = {str(t["name"]): tuple(int(d) for d in t["shape"]) for t in signature["outputs"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(
            f"{where} is not a blade artifact description (expected JSON with "
            f"signature.inputs/outputs): {exc}"
        ) from exc
    return inputs, outputs


def read_graph(model_path: Path) -> tuple[Shapes, Shapes]:
    """The model's inputs and outputs (name -> full shape), in graph order.

    Raises:
        BundleError: the file is not an ONNX model, or the directory not a blade artifact.
    """
    if is_blade_dir(model_path):
        return _read_blade(model_path)
    return _read_onnx(model_path)
