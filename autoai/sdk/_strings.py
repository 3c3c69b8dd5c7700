"""Text in, text out: Python strings for BYTES inputs, decoded strings from BYTES outputs.

A pipeline model takes ``text: BYTES [-1]`` and returns ``label: BYTES [-1]``; its callers should
write ``predict("intent", {"text": ["turn on the lights"]})`` and read
``out["label"][0] == "lights_on"`` without building numpy object arrays or decoding bytes
themselves (and without a tokenizer: the server tokenizes).

Inputs, on the call path before the signature check: for an input the signature declares BYTES (or
any input, when the signature lists no inputs), a ``str`` or ``bytes`` is one element (a batch of
one), and a list or tuple (nested for a higher rank) becomes a numpy ``object`` array of its items.
Numpy arrays pass as they are: ``str_``, ``bytes_`` and ``object`` arrays are BYTES already, and
``eas_client`` sends ``str`` as UTF-8. Whether every element is text is checked by
``check_inputs`` (``text_problem``), so that an ``int`` in a BYTES input is an ``InvalidInput``
naming the element rather than a transport error.

Outputs, after the call: ``eas_client`` returns a BYTES output as an ``object`` array of ``bytes``.
It is given back as an ``object`` array of ``str`` when every element is UTF-8, and unchanged (all
``bytes``) when any element is not, so that one output never mixes the two types.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ._errors import InvalidInput
from ._routes import Signature

__all__ = ["decode_outputs", "string_inputs", "text_problem", "to_arrays"]

_ndarray = np.ndarray
_TEXT_TYPES = frozenset({str, bytes})
_TEXT = (str, bytes, bytearray, memoryview)  # what the codec sends as BYTES elements
_CONVERTIBLE = (str, bytes, list, tuple)

StringInputs = Mapping[str, int] | None
"""BYTES input name -> rank, from the signature; ``None`` when the signature lists no inputs."""


def string_inputs(signature: Signature) -> StringInputs:
    """The BYTES inputs of a signature and their ranks (computed once per route-table revision).

    Returns:
        Input name -> rank for every BYTES input (empty for a model without one), or ``None`` when
        the signature lists no inputs, which makes every text-like value a candidate.
    """
    if not signature.inputs:
        return None
    return {t.name: len(t.shape) for t in signature.inputs if t.datatype == "BYTES"}


def to_arrays(inputs: Mapping[str, Any], strings: StringInputs) -> Mapping[str, Any]:
    """Turn the text values of BYTES inputs into numpy ``object`` arrays.

    Args:
        inputs: the caller's inputs, name -> array, ``str``, ``bytes``, or (nested) list/tuple.
        strings: ``string_inputs`` of the model's signature.

    Returns:
        ``inputs`` itself when nothing needed converting (the numeric and the all-numpy calls),
        else a new dict with the converted values. Values of non-BYTES inputs are never touched:
        the signature check reports them.

    Raises:
        InvalidInput: only when the signature lists no inputs (so ``check_inputs`` checks
            nothing) and a converted value holds something other than text.
    """
    if strings is not None:
        if not strings:
            return inputs
        converted: dict[str, Any] | None = None
        for name, rank in strings.items():
            value = inputs.get(name)
            if value is None or type(value) is _ndarray or not isinstance(value, _CONVERTIBLE):
                continue
            if converted is None:
                converted = dict(inputs)
            converted[name] = _as_array(value, rank)
        return inputs if converted is None else converted
    return _unchecked(inputs)


def _unchecked(inputs: Mapping[str, Any]) -> Mapping[str, Any]:
    """No signature to go by: convert every text-like value, and check what was converted."""
    converted: dict[str, Any] | None = None
    problems: list[str] = []
    for name, value in inputs.items():
        if type(value) is _ndarray or not isinstance(value, _CONVERTIBLE):
            continue
        array = _as_array(value, 1)
        problem = text_problem(name, array)
        if problem is not None:
            problems.append(problem)
        if converted is None:
            converted = dict(inputs)
        converted[name] = array
    if problems:
        raise InvalidInput(problems)
    return inputs if converted is None else converted


def _as_array(value: str | bytes | list[Any] | tuple[Any, ...], rank: int) -> np.ndarray[Any, Any]:
    if isinstance(value, str | bytes):
        array = np.empty((1,) * rank, dtype=object)  # one element, a batch of one
        array[(0,) * rank] = value
        return array
    # dtype=object keeps every item as the Python object it is (numpy would make str_ of fixed
    # width); a ragged nesting gives an array of lists, which text_problem names.
    return np.array(value, dtype=object)


def text_problem(name: str, array: np.ndarray[Any, Any]) -> str | None:
    """What is wrong with a BYTES input's elements, or ``None`` when all are text.

    ``str_`` and ``bytes_`` arrays are text by their dtype; an ``object`` array is checked element
    by element (``str`` or bytes-like, what ``eas_client`` can send).

    Args:
        name: the input's name, for the message.
        array: the value, already an array.
    """
    if array.dtype.kind != "O":
        return None
    flat = array.reshape(-1).tolist()
    if set(map(type, flat)) <= _TEXT_TYPES:
        return None
    for index, item in enumerate(flat):
        if not isinstance(item, _TEXT):
            where = [int(i) for i in np.unravel_index(index, array.shape)]
            shown = repr(item)
            if len(shown) > 40:
                shown = shown[:37] + "..."
            return (
                f"input {name!r}: element {where} is {type(item).__name__} {shown}; "
                "BYTES elements must be str or bytes"
            )
    return None


def decode_outputs(outputs: dict[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
    """BYTES outputs as ``str``: every ``object`` output whose elements are all UTF-8.

    Args:
        outputs: a call's outputs, as the transport returned them.

    Returns:
        ``outputs`` with each decodable BYTES output replaced by an ``object`` array of ``str`` of
        the same shape (the same dict object: the transport built it for this call). An output with
        any element that is not UTF-8 stays as it was, ``bytes`` throughout.
    """
    for name, array in outputs.items():
        if array.dtype.kind == "O":
            decoded = _decoded(array)
            if decoded is not None:
                outputs[name] = decoded
    return outputs


def _decoded(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any] | None:
    flat = array.reshape(-1).tolist()
    try:
        texts = [item.decode() if type(item) is bytes else item for item in flat]
    except UnicodeDecodeError:
        return None
    if not all(isinstance(text, str) for text in texts):
        return None
    out = np.empty(len(texts), dtype=object)
    out[:] = texts
    return out.reshape(array.shape)
