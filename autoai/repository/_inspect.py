"""What the repository reads of a model: an ONNX file's signature (``blade``'s graph reader), a
bundle's external signature and ``BundleInfo`` (``eas_server.pipeline.inspect_bundle``, the same
checks eas-server makes when it loads the bundle). Errors become ``InvalidRequest`` (400) naming
what the user registered, never the staging or content-addressed path."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import InvalidRequest
from ..schema import BundleInfo, Signature, TensorSpec

__all__ = ["bundle_signature", "model_signature"]


def model_signature(path: Path, shown_as: str) -> Signature:
    """Inputs and outputs with OIP datatypes, read from the graph; errors name ``shown_as`` (what
    the user registered), not the content-addressed file.

    Raises:
        InvalidRequest: not an ONNX model.
    """
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


def _shown(message: str, root: Path, shown_as: str) -> str:
    """A message about the staged bundle with its paths as the user knows them."""
    return message.replace(f"{root}/", "").replace(str(root), shown_as)


def bundle_signature(
    root: Path, files: Mapping[str, str], shown_as: str
) -> tuple[Signature, BundleInfo]:
    """A bundle's external signature and its ``BundleInfo``, after the checks eas-server makes
    at load: the spec parses, the tokenizer loads, the labels are there (classify, slots),
    distinct and as many as the head's width, the model is there and is ONNX.

    Args:
        root: the (staged) bundle directory.
        files: its manifest (relative path -> SHA-256).
        shown_as: what the user registered (an archive's name, a directory, the parts).

    Raises:
        InvalidRequest: the bundle would not load; the message says what was wrong and what
            was expected.
    """
    from eas_server.pipeline import BundleError, inspect_bundle

    try:
        bundle = inspect_bundle(root)
    except BundleError as exc:
        raise InvalidRequest(
            f"{shown_as} is not a valid bundle: {_shown(str(exc), root, shown_as)}"
        ) from exc
    inputs, outputs = bundle.signature()
    external = Signature(
        inputs=[TensorSpec(t.name, t.datatype, t.shape) for t in inputs],
        outputs=[TensorSpec(t.name, t.datatype, t.shape) for t in outputs],
    )
    inner = (
        model_signature(bundle.model_path, f"{shown_as}: {bundle.spec.model}")
        if bundle.model_path.is_file()
        else Signature()
    )
    info = BundleInfo(
        task=bundle.spec.task,
        inputs=bundle.spec.inputs,
        labels=bundle.labels,
        files=dict(files),
        model_signature=inner,
    )
    return external, info
