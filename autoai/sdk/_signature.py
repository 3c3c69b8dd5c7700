"""Check a call's inputs against the model's signature before anything is sent.

Runs on the call path. The common case (every input present and right) is one pass over the
signature's precomputed ``input_checks`` (plain tuples built once per revision) comparing dtype
identity (numpy's built-in dtypes are singletons), rank and the fixed dims, with no allocation.
Anything else takes the slow path, which decides with ``eas_client.datatype_of`` (so a
big-endian INT64 or a ``str_`` array for BYTES still passes) and reports every problem at once
rather than the first. The elements of an ``object`` array for a BYTES input are checked on both
paths (``str`` or bytes, one pass of ``type`` over the batch), so that a number among the texts is
an ``InvalidInput`` naming it, not an error of the transport after the route was chosen.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from eas_client import EasClientError, datatype_of

from ._errors import InvalidInput
from ._routes import Signature, TensorSpec
from ._strings import text_problem

__all__ = ["check_inputs"]

_ndarray = np.ndarray
_OBJECT = np.dtype(object)  # BYTES; numpy's built-in dtypes are singletons
_TEXT_FORMS = "str, a list of str, or a numpy str/bytes/object array"


def check_inputs(signature: Signature, inputs: Mapping[str, np.ndarray[Any, Any]]) -> None:
    """Check that the inputs are exactly the signature's, with its datatypes and shapes.

    Datatypes are compared as OIP datatypes (``eas_client.datatype_of``), so any byte order of
    the right type passes, and ``bytes``/``str``/``object`` arrays are ``BYTES``. Dims of ``-1``
    in the signature take any size. The elements of a BYTES input must be ``str`` or bytes. A
    signature without inputs accepts anything.

    Args:
        signature: the model's signature, from its route table.
        inputs: input name -> array, as the caller passed them.

    Raises:
        InvalidInput: one or more inputs are missing, unknown, not arrays, or of the wrong
            datatype, rank or size, or a BYTES input holds something other than text;
            ``problems`` has one line for each.
    """
    checks = signature.input_checks
    if not checks:
        return
    for name, dtype, rank, fixed_dims in checks:
        array = inputs.get(name)
        if type(array) is not _ndarray or array.dtype is not dtype or array.ndim != rank:
            break
        if dtype is _OBJECT and text_problem(name, array) is not None:
            break
        if fixed_dims:
            shape = array.shape
            for axis, size in fixed_dims:
                if shape[axis] != size:
                    break
            else:
                continue
            break  # a fixed dim differs (a loop, not any(): no generator on the call path)
    else:
        if len(inputs) == len(checks):
            return
    problems = _problems(signature.inputs, inputs)
    if problems:
        raise InvalidInput(problems)


def _problems(specs: tuple[TensorSpec, ...], inputs: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    for spec in specs:
        if spec.name not in inputs:
            problems.append(f"input {spec.name!r}: missing (expected {_describe(spec)})")
            continue
        problem = _check(spec, inputs[spec.name])
        if problem is not None:
            problems.append(problem)
    expected = {spec.name for spec in specs}
    names = ", ".join(spec.name for spec in specs)
    problems.extend(
        f"unknown input {name!r} (expected: {names})" for name in inputs if name not in expected
    )
    return problems


def _check(spec: TensorSpec, array: Any) -> str | None:
    text = spec.datatype == "BYTES"
    if not isinstance(array, np.ndarray):
        got = type(array).__name__
        if text:
            return f"input {spec.name!r}: expected {_TEXT_FORMS} for BYTES, got {got}"
        return f"input {spec.name!r}: expected a numpy array, got {got}"
    try:
        datatype = datatype_of(array)
    except EasClientError:
        return (
            f"input {spec.name!r}: numpy dtype {array.dtype} has no OIP datatype, "
            f"expected {spec.datatype}"
        )
    if datatype != spec.datatype:
        if text:
            return f"input {spec.name!r}: datatype {datatype}, expected BYTES ({_TEXT_FORMS})"
        return f"input {spec.name!r}: datatype {datatype}, expected {spec.datatype}"
    shape = array.shape
    if len(shape) != len(spec.shape):
        return (
            f"input {spec.name!r}: rank {len(shape)} (shape {list(shape)}), "
            f"expected rank {len(spec.shape)} (shape {list(spec.shape)})"
        )
    for axis, size in spec.fixed_dims:
        if shape[axis] != size:
            return (
                f"input {spec.name!r}: dim {axis} is {shape[axis]} (shape {list(shape)}), "
                f"expected {size} (shape {list(spec.shape)})"
            )
    return text_problem(spec.name, array) if text else None


def _describe(spec: TensorSpec) -> str:
    return f"{spec.datatype} {list(spec.shape)}"
