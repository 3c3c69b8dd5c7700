"""Whether requests of different lengths may be padded into one batch, decided at load. Pure: the
model is reached only through the ``run`` function passed in.

Two ways to decide:

- **declared**: the service JSON's ``metadata.padding`` (a ``PaddingDeclaration``), checked
  against the model's signature by ``check_declaration``;
- **probed**: ``probe`` runs the model on rows of different real lengths, each alone and padded
  together to the longest (exactly as the batcher would merge them), and compares the outputs.

The probe fills the real positions of every input with ones and some zeros (both valid in any
embedding table of two rows or more; in a mask, "attend" and "ignore"), in patterns that differ
per row and per input, and pads every padded input with zeros (the pad token id of BERT
vocabularies, and "ignore" in a mask). A model that masks padded positions out
(BERT with its attention mask, mean pooling weighted by the mask) gives the same outputs; one that
does not (a mean over every position, attention without a mask) does not and is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .._errors import ModelLoadError
from ..batching import Padding, merge, split_outputs

__all__ = [
    "LENGTHS",
    "MAX_ABS",
    "REL_L2",
    "ModelTensor",
    "PaddedInput",
    "PaddingChoice",
    "PaddingDeclaration",
    "check_declaration",
    "decide",
    "padding_json",
    "probe",
]

RunFn = Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]]

LENGTHS = (5, 2, 8)
"""Real lengths of the probe's rows: padded together to the longest, the longest last so that
padding is exercised in rows before and beside a full one."""
REL_L2 = 1e-4
"""Largest ||padded - alone|| / ||alone|| per row and output (blade's lossless gate); for outputs
of less precise types (FP16), 10 x their machine epsilon when that is larger (~1e-2)."""
MAX_ABS = 1e-4
"""Largest absolute difference, relative to max(1, largest |value| of the output alone); the same
epsilon rule as ``REL_L2``."""


class PaddedInput(BaseModel):
    """One input of a padding declaration: the axis to pad (the batch dim is 0) and the value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    axis: int
    value: int | float = 0


class PaddingDeclaration(BaseModel):
    """``metadata.padding`` of the service JSON, e.g. ``{"inputs": {"input_ids": {"axis": 1,
    "value": 0}, "attention_mask": {"axis": 1, "value": 0}}, "outputs": {"last_hidden_state":
    1}}``: the inputs padded to the longest request of a batch, and the outputs whose axis follows
    the padded one (cut back per request). Outputs not listed must not depend on the padding."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    inputs: dict[str, PaddedInput] = Field(min_length=1)
    outputs: dict[str, int] = Field(default_factory=dict)


PaddingChoice = Literal["auto", "off"] | PaddingDeclaration
"""``auto``: probe the model; ``off``: never pad; a declaration: pad as it says."""


@dataclass(frozen=True, slots=True)
class ModelTensor:
    """An input or output as the runtime reports it, batch dim included.

    Attributes:
        dims: a size, a symbolic dim's name, or None for a variable dim without a name.
    """

    name: str
    datatype: str
    dims: tuple[int | str | None, ...]

    def variable(self, axis: int) -> bool:
        dim = self.dims[axis]
        return not isinstance(dim, int) or dim < 0


def decide(
    choice: PaddingChoice,
    inputs: Sequence[ModelTensor],
    outputs: Sequence[ModelTensor],
    run: RunFn,
    batchable: bool,
) -> tuple[Padding | None, str]:
    """The padding to serve with, and why.

    Raises:
        ModelLoadError: a declaration that does not fit the model.
    """
    if choice == "off":
        return None, "padding is off (--padding off or metadata.padding false)"
    if isinstance(choice, PaddingDeclaration):
        padding = check_declaration(choice, inputs, outputs, batchable)
        return padding, f"declared in metadata.padding: {padding_json(padding)}"
    if not batchable:
        return None, "not probed: the model has no batch dim"
    return probe(run, inputs)


def check_declaration(
    declaration: PaddingDeclaration,
    inputs: Sequence[ModelTensor],
    outputs: Sequence[ModelTensor],
    batchable: bool,
) -> Padding:
    """The declaration as a ``Padding``, once checked against the model's signature.

    Raises:
        ModelLoadError: the model has no batch dim, or a name or axis does not fit it.
    """
    if not batchable:
        raise ModelLoadError("metadata.padding: the model has no batch dim, so nothing to pad")
    by_name = {t.name: t for t in inputs}
    padded: dict[str, tuple[int, int | float]] = {}
    for name, item in declaration.inputs.items():
        tensor = _named(by_name, name, "input")
        _check_axis(tensor, item.axis, "input", required_variable=True)
        if tensor.datatype == "BYTES":
            raise ModelLoadError(
                f"metadata.padding: input {name!r} is BYTES, which cannot be padded"
            )
        if tensor.datatype[0] in "IUB" and not float(item.value).is_integer():
            raise ModelLoadError(
                f"metadata.padding: input {name!r} is {tensor.datatype}: its pad value must be "
                f"an integer, not {item.value}"
            )
        padded[name] = (item.axis, item.value)
    by_output = {t.name: t for t in outputs}
    for name, axis in declaration.outputs.items():
        _check_axis(_named(by_output, name, "output"), axis, "output", required_variable=False)
    return Padding(inputs=padded, outputs=dict(declaration.outputs))


def _named(tensors: Mapping[str, ModelTensor], name: str, kind: str) -> ModelTensor:
    try:
        return tensors[name]
    except KeyError:
        raise ModelLoadError(
            f"metadata.padding: unknown {kind} {name!r}; the model's {kind}s are "
            f"{', '.join(sorted(tensors))}"
        ) from None


def _check_axis(tensor: ModelTensor, axis: int, kind: str, *, required_variable: bool) -> None:
    rank = len(tensor.dims)
    if rank == 0 and not required_variable:
        return  # the runtime does not know this output's rank
    if not 1 <= axis < rank:
        raise ModelLoadError(
            f"metadata.padding: {kind} {tensor.name!r} has {rank} dims (the batch dim is axis 0): "
            f"axis {axis} must be between 1 and {rank - 1}"
        )
    if not tensor.variable(axis):
        raise ModelLoadError(
            f"metadata.padding: axis {axis} of {kind} {tensor.name!r} has the fixed size "
            f"{tensor.dims[axis]}: only a variable axis can be padded"
        )


def padded_axes(inputs: Sequence[ModelTensor]) -> dict[str, int] | str:
    """The inputs to pad and their axis: every variable non-batch axis, which must be one per
    input and, across inputs, the same named dim. A string says why there are none."""
    axes: dict[str, int] = {}
    dims: dict[str, int | str | None] = {}
    for tensor in inputs:
        variable = [a for a in range(1, len(tensor.dims)) if tensor.variable(a)]
        if len(variable) > 1:
            return f"input {tensor.name!r} varies along {len(variable)} axes"
        if variable:
            if tensor.datatype == "BYTES":
                return f"input {tensor.name!r} is BYTES, which cannot be padded"
            axes[tensor.name] = variable[0]
            dims[tensor.name] = tensor.dims[variable[0]]
    if not axes:
        return "no input has a variable-length axis"
    names = set(dims.values())
    if len(axes) > 1 and (None in names or len(names) > 1):
        listed = ", ".join(f"{n} ({d or 'unnamed'})" for n, d in dims.items())
        return f"cannot tell that {listed} vary together: declare metadata.padding"
    return axes


def _rows(inputs: Sequence[ModelTensor], axes: Mapping[str, int]) -> list[dict[str, np.ndarray]]:
    """One single-row request per real length. Values are ones, and along the padded axis zeros
    at every third inner position (never the first or the last), shifted per row and per input:
    rows differ (so that a row's answer depending on its neighbours shows) and a mask is not all
    ones."""
    from eas_client import dtype_of

    requests = []
    for row, length in enumerate(LENGTHS):
        feed: dict[str, np.ndarray] = {}
        for k, t in enumerate(inputs):
            # every variable non-batch axis is the padded one (padded_axes): the rest are sizes
            shape = [d if isinstance(d, int) and d >= 0 else length for d in t.dims]
            shape[0] = 1
            if t.datatype == "BYTES":
                feed[t.name] = np.full(shape, b"x", dtype=object)
                continue
            values = np.ones(shape, dtype=dtype_of(t.datatype))
            if t.name in axes:
                axis = axes[t.name]
                positions = np.arange(length)
                inner = (positions > 0) & (positions < length - 1)
                zeros = inner & ((positions + row + k) % 3 == 0)
                index: list[slice | np.ndarray] = [slice(None)] * values.ndim
                index[axis] = np.flatnonzero(zeros)
                values[tuple(index)] = 0
            feed[t.name] = values
        requests.append(feed)
    return requests


def _cut_axis(name: str, alone: Sequence[np.ndarray], batched: np.ndarray) -> int | str | None:
    """The axis of an output that follows the padded length (None: none), from its shapes alone
    and in the padded batch; a string says why it cannot be cut back."""
    longest = max(LENGTHS)
    if batched.ndim == 0 or batched.shape[0] != len(alone):
        return f"output {name!r} has no batch dim of {len(alone)} rows"
    found: set[int] = set()
    for length, row in zip(LENGTHS, alone, strict=True):
        if row.ndim != batched.ndim:
            return f"output {name!r} changes rank with padding"
        differ = [a for a in range(1, row.ndim) if row.shape[a] != batched.shape[a]]
        if not differ:
            continue
        if len(differ) > 1 or row.shape[differ[0]] != length or batched.shape[differ[0]] != longest:
            return f"output {name!r} changes shape with padding in a way that cannot be cut back"
        found.add(differ[0])
    if len(found) > 1:
        return f"output {name!r} changes shape with padding along several axes"
    return found.pop() if found else None


def _difference(expected: np.ndarray, got: np.ndarray) -> tuple[str | None, float]:
    """Why ``got`` differs from ``expected`` beyond tolerance (None: it does not), and its
    relative L2 error (0 for exact comparisons)."""
    if got.shape != expected.shape:
        return f"shape {list(got.shape)} instead of {list(expected.shape)}", float("inf")
    if expected.dtype.kind not in "fc":
        return (None if np.array_equal(got, expected) else "different values"), 0.0
    e, g = expected.astype(np.float64), got.astype(np.float64)
    if not np.array_equal(np.isnan(e), np.isnan(g)) or not np.array_equal(np.isinf(e), np.isinf(g)):
        return "NaN or Inf in other places", float("inf")
    finite = np.isfinite(e)
    diff = np.where(finite, g - e, 0.0)
    norm = float(np.linalg.norm(np.where(finite, e, 0.0)))
    max_abs = float(np.abs(diff).max()) if diff.size else 0.0
    rel_l2 = float(np.linalg.norm(diff)) / norm if norm > 0 else (0.0 if max_abs == 0 else 1.0)
    # other kernels for another shape round differently: tolerate that, at the type's precision
    precision = 10 * float(np.finfo(expected.dtype).eps)
    largest = float(np.abs(np.where(finite, e, 0.0)).max(initial=0.0))
    bound = max(MAX_ABS, precision) * max(1.0, largest)
    if rel_l2 > max(REL_L2, precision) or max_abs > bound:
        return f"max abs diff {max_abs:.3g}, rel L2 {rel_l2:.3g}", rel_l2
    return None, rel_l2


def probe(run: RunFn, inputs: Sequence[ModelTensor]) -> tuple[Padding | None, str]:
    """Run the model on rows of real lengths ``LENGTHS``, each alone and padded with zeros to
    the longest in one batch (``merge``, as the batcher does), cut the outputs back
    (``split_outputs``) and compare: padding is safe when every output of every row matches
    within ``REL_L2`` and ``MAX_ABS``. Outputs whose shape follows the padded length are cut back
    along that axis first, and recorded in ``Padding.outputs``.

    Returns:
        The padding (None: refused) and the reason, for the log.
    """
    axes = padded_axes(inputs)
    if isinstance(axes, str):
        return None, f"not padding: {axes}"
    candidate = Padding(inputs={name: (axis, 0) for name, axis in axes.items()})
    requests = _rows(inputs, axes)
    try:
        alone = [dict(run(feed)) for feed in requests]
        merged, lengths = merge(requests, candidate)
        batched = dict(run(merged))
    except Exception as exc:  # any runtime failure means "not known to be safe"
        return None, f"not padding: the probe run failed: {type(exc).__name__}: {exc}"
    out_axes: dict[str, int] = {}
    for name, array in batched.items():
        axis = _cut_axis(name, [a[name] for a in alone], array)
        if isinstance(axis, str):
            return None, f"not padding: {axis}"
        if axis is not None:
            out_axes[name] = axis
    padding = Padding(inputs=candidate.inputs, outputs=out_axes)
    parts = split_outputs(batched, [1] * len(requests), lengths, padding)
    worst = 0.0
    for length, expected, got in zip(LENGTHS, alone, parts, strict=True):
        for name in batched:
            why, rel_l2 = _difference(expected[name], got[name])
            if why is not None:
                return None, (
                    f"not padding: output {name!r} of a row of {length} padded to "
                    f"{max(LENGTHS)} differs from the row alone ({why}): the model does not "
                    "ignore padded positions"
                )
            worst = max(worst, rel_l2)
    cut = ", ".join(f"{n} on axis {a}" for n, a in out_axes.items()) or "none"
    return padding, (
        f"probed: {', '.join(f'{n} (axis {a})' for n, a in axes.items())} padded with 0 give "
        f"the same outputs (rows of {', '.join(map(str, LENGTHS))} padded to {max(LENGTHS)}, "
        f"worst rel L2 {worst:.1e}); outputs cut back: {cut}"
    )


def padding_json(padding: Padding | None) -> str:
    """``padding`` in the form of ``metadata.padding`` (``false`` when None), for /config."""
    if padding is None:
        return "false"
    doc = {
        "inputs": {n: {"axis": a, "value": v} for n, (a, v) in padding.inputs.items()},
        "outputs": dict(padding.outputs),
    }
    return json.dumps(doc, separators=(",", ":"))
