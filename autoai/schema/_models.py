"""Model versions (issue 17) and the bundles they may be (issue 19).

The repository records each model as one ``ModelRecord`` (``control/model.<name>``: its versions
and its next version number); the API answers ``ModelVersion`` / ``ModelInfo`` / ``ModelList``
and takes ``RegisterRequest`` as its JSON registration body.

A version registered as a bundle (the model with ``tokenizer.json``, ``labels.txt`` and
``pipeline.json``) is served by the ``pipeline`` processor: text in, labels out. Its
``ModelVersion.signature`` is the external one (``text: BYTES [-1]`` in, ``label: BYTES [-1]``
out); ``BundleInfo`` keeps what else the control plane needs without opening the bundle again:
the task and its inputs, the label set (which publishing compares across versions), every
file's digest (what the bundle's own digest is made of) and the inner model's tensor signature.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StrictStr, StringConstraints

from ._base import Document, Request
from ._checks import Text
from ._table import Signature

__all__ = ["BundleInfo", "ModelInfo", "ModelList", "ModelRecord", "ModelVersion", "RegisterRequest"]

_SHA256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class BundleInfo(Document):
    """A registered bundle: its task, inputs, labels and files."""

    task: Text = Field(description='The pipeline\'s task: "classify", "embed", "score" or "slots".')
    inputs: tuple[Text, ...] = Field(
        description="The names of its BYTES inputs: one text, or two for pairs (query, answer)."
    )
    labels: tuple[Text, ...] = Field(
        default=(),
        description="Its label list in the model's order (classify: classes; slots: BIO tags); "
        "empty for embed and score.",
    )
    files: dict[str, _SHA256] = Field(
        description="Every file of the bundle (a path relative to it) -> its SHA-256; the "
        "bundle's digest is the SHA-256 of this map as canonical JSON.",
    )
    model_signature: Signature = Field(
        default_factory=Signature,
        description="The inner model's tensors (input_ids, attention_mask... -> logits), as "
        "the graph declares them.",
    )


class ModelVersion(Document):
    """One registered version of a model: an ONNX file, or a bundle (``bundle`` set)."""

    name: str = Field(description="The model.")
    version: str = Field(description='"1", "2", ... in registration order (never reused).')
    sha256: str = Field(
        description="Digest of the ONNX file, or of a bundle's manifest (its key in the "
        "repository)."
    )
    size: int = Field(description="Bytes (a bundle's: all its files).")
    signature: Signature = Field(
        description="Inputs and outputs, with OIP datatypes; a bundle's external ones (text "
        "in as BYTES, labels and scores out)."
    )
    source: str = Field(description="Where it came from (the upload's file name, or the URI).")
    created: float = Field(description="Registration time (Unix seconds).")
    path: str = Field(
        description="The stored file (or bundle directory) on the control plane's host."
    )
    bundle: BundleInfo | None = Field(
        default=None,
        description="A bundle's task, inputs, labels, files and inner model signature; null: a "
        "plain ONNX model.",
    )


class ModelInfo(Document):
    """A model and its versions, oldest first."""

    name: str = Field(description="The model.")
    versions: tuple[ModelVersion, ...] = Field(default=(), description="Its versions.")


class ModelList(Document):
    """``GET /api/v1/models``: by name."""

    models: list[ModelInfo] = Field(description="Every registered model.")


class ModelRecord(Document):
    """``control/model.<name>``: a model's versions and its next version number."""

    model_config = ConfigDict(extra="allow")

    schema_version: Literal[1] = Field(1, description="The record's schema version (1).")
    name: str = Field(description="The model.")
    versions: list[ModelVersion] = Field(default_factory=list, description="Oldest first.")
    next: int = Field(1, ge=1, description="The next version number (deleted ones included).")


class RegisterRequest(Request):
    """A JSON registration: the model file or bundle behind a URI (``file://``,
    ``http(s)://``)."""

    name: StrictStr = Field(
        description="The model (1-63 of a-z, 0-9, '-', alphanumeric at both ends)."
    )
    uri: StrictStr = Field(
        description="file://, http:// or https:// URI of the ONNX file or of a bundle archive "
        "(.tar.gz, .tgz, .tar, .zip); a file:// URI may also name a bundle directory."
    )
