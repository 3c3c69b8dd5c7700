"""The tensors a benchmark sends: drawn from the model's signature, or checked against it (pure).

Without ``--input`` every input of the signature is drawn once and sent with every call:

- a leading dynamic dim (``-1``) is the batch dim and gets ``batch`` rows; every other dynamic
  dim gets ``DYNAMIC_DIM`` (8); fixed dims keep their size;
- floating point inputs are standard normal values (seeded); integer inputs are ones (a valid
  token id, attention mask and token type id for common text models); ``BOOL`` is true and
  ``BYTES`` is ``b"autoai-bench"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from autoai.sdk import InvalidInput, Signature, TensorSpec, check_inputs
from eas_client import datatype_of

from ._errors import BadInput

__all__ = [
    "DYNAMIC_DIM",
    "check",
    "describe",
    "draw_inputs",
    "given_inputs",
    "signature_from_metadata",
]

DYNAMIC_DIM = 8
"""The size given to a dynamic dim that is not the batch dim."""

Arrays = dict[str, np.ndarray[Any, Any]]


def _specs(entries: Any, model: str, what: str) -> tuple[TensorSpec, ...]:
    if not isinstance(entries, list):
        raise BadInput(f"the metadata of model {model!r} has no list of {what}")
    specs = []
    for entry in entries:
        try:
            shape = tuple(int(d) for d in entry["shape"])
            specs.append(TensorSpec(str(entry["name"]), str(entry["datatype"]), shape))
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInput(
                f"the metadata of model {model!r} has a malformed {what[:-1]}: {exc}"
            ) from None
    return tuple(specs)


def signature_from_metadata(doc: Any, model: str) -> Signature:
    """The signature in an OIP model metadata document (``GET /v2/models/{name}``).

    Raises:
        BadInput: the document is not model metadata.
    """
    if not isinstance(doc, Mapping):
        raise BadInput(f"the metadata of model {model!r} is not a JSON object")
    return Signature(
        _specs(doc.get("inputs"), model, "inputs"), _specs(doc.get("outputs", []), model, "outputs")
    )


def _draw(
    spec: TensorSpec, shape: tuple[int, ...], rng: np.random.Generator
) -> np.ndarray[Any, Any]:
    kind = spec.dtype.kind
    if kind == "f":
        return rng.standard_normal(shape).astype(spec.dtype)
    if kind == "O":
        return np.full(shape, b"autoai-bench", dtype=object)
    return np.ones(shape, dtype=spec.dtype)


def draw_inputs(signature: Signature, batch: int, *, seed: int = 0) -> Arrays:
    """One request's inputs drawn from ``signature`` with ``batch`` rows (see the module).

    Raises:
        BadInput: the signature lists no inputs, ``batch`` < 1, or ``batch`` > 1 for a model
            without a batch dim.
    """
    if not signature.inputs:
        raise BadInput("the model publishes no input signature to draw inputs from: pass --input")
    if batch < 1:
        raise BadInput(f"--batch {batch}: must be >= 1")
    batched = any(s.shape[:1] == (-1,) for s in signature.inputs)
    if batch > 1 and not batched:
        raise BadInput(f"--batch {batch}: the model's inputs have no batch dim (no leading -1)")
    rng = np.random.default_rng(seed)
    arrays: Arrays = {}
    for spec in signature.inputs:
        shape = tuple(
            (batch if axis == 0 else DYNAMIC_DIM) if size == -1 else size
            for axis, size in enumerate(spec.shape)
        )
        arrays[spec.name] = _draw(spec, shape, rng)
    return arrays


def given_inputs(signature: Signature, given: Mapping[str, Any]) -> Arrays:
    """The given inputs as arrays: arrays as they are, other values (JSON from the command line)
    converted to the datatype the signature gives the input (numpy's guess for unknown names,
    which ``check`` then reports).

    Raises:
        BadInput: a value does not convert to a rectangular array of the input's datatype.
    """
    dtypes = {spec.name: spec.dtype for spec in signature.inputs}
    arrays: Arrays = {}
    for name, value in given.items():
        if isinstance(value, np.ndarray):
            arrays[name] = value
            continue
        dtype = dtypes.get(name)
        try:
            array = np.asarray(value, dtype=dtype)
        except (ValueError, TypeError, OverflowError) as exc:
            raise BadInput(f"--input {name}: not a rectangular array of {dtype}: {exc}") from None
        if array.dtype == np.dtype(object) and dtype != np.dtype(object):
            raise BadInput(f"--input {name}: not an array of numbers")
        arrays[name] = array
    return arrays


def check(signature: Signature, arrays: Mapping[str, np.ndarray[Any, Any]], model: str) -> None:
    """Check ``arrays`` against ``signature`` (every input, datatypes, ranks, fixed dims).

    Raises:
        BadInput: they do not match; the message lists every problem.
    """
    try:
        check_inputs(signature, arrays)
    except InvalidInput as exc:
        raise BadInput(
            f"the inputs do not match model {model!r}: {'; '.join(exc.problems)}"
        ) from None


def describe(arrays: Mapping[str, np.ndarray[Any, Any]]) -> list[dict[str, Any]]:
    """``[{"name", "datatype", "shape"}]`` of the inputs, for reports."""
    return [
        {"name": n, "datatype": datatype_of(a), "shape": list(a.shape)} for n, a in arrays.items()
    ]
