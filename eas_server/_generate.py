"""Triton's generate extension, the pure half: decoding a ``/generate`` body (audio as a JSON
list or base64 float32, ``parameters``), and the documents of the answers (the whole answer, one
server-sent event, OIP outputs). No I/O: ``_app`` (HTTP) and ``grpc._service`` use these."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ._errors import InvalidInput
from ._model import ModelInfo
from .generation._engine import GenerateResult, GenerationEvent
from .generation._spec import GenerateParams

__all__ = [
    "OIP_PARAMETERS", "GenerateBody", "audio_samples", "event_document", "generate_document",
    "generate_params", "generation_outputs", "parse_generate_body", "sse",
]  # fmt: skip

_GENERATE_PARAMETERS = frozenset({"max_new_tokens", "num_beams", "timeout"})
OIP_PARAMETERS = frozenset({"priority", "binary_data_output", "triton_enable_empty_final_response"})
"""Request parameters that OIP clients send on their own (tritonclient's ``binary_data_output``,
``priority``, the streaming flag): accepted by a generative model's /infer and ignored there."""
_BODY_KEYS = frozenset({"id", "audio", "parameters"})
_AUDIO_FORMS = (
    "a JSON list of numbers (mono samples at 16 kHz, in [-1, 1]) or a base64 string of float32 "
    "little-endian samples"
)


def _json_type(value: object) -> str:
    """What a decoded JSON value is, in JSON's words (for messages)."""
    names: dict[type, str] = {dict: "an object", list: "a list", str: "a string",
                              bool: "a boolean", int: "a number", float: "a number"}  # fmt: skip
    return "null" if value is None else names.get(type(value), type(value).__name__)


def audio_samples(value: object) -> np.ndarray:
    """The ``audio`` of a generate body as float32 samples (1-D; the engine checks the rest:
    empty, too long, NaN or inf).

    Raises:
        InvalidInput: neither a list of numbers nor a base64 string of whole float32 samples.
    """
    if isinstance(value, list):
        kinds = set(map(type, value))
        if not kinds <= {int, float}:
            index, bad = next((i, v) for i, v in enumerate(value) if type(v) not in (int, float))
            raise InvalidInput(
                f"'audio' element {index} is {_json_type(bad)}; expected {_AUDIO_FORMS}"
            )
        try:
            return np.array(value, dtype=np.float32)
        except OverflowError:  # an integer beyond float64
            raise InvalidInput(f"'audio' holds an integer too large for a sample; expected "
                               f"{_AUDIO_FORMS}") from None  # fmt: skip
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise InvalidInput(
                f"'audio' is a string but not base64 ({exc}); expected {_AUDIO_FORMS}"
            ) from None
        if len(raw) % 4:
            raise InvalidInput(
                f"'audio' decodes to {len(raw)} bytes, not a whole number of float32 samples "
                "(4 bytes each, little-endian)"
            )
        return np.frombuffer(raw, dtype="<f4").astype(np.float32, copy=False)
    raise InvalidInput(f"'audio' is {_json_type(value)}; expected {_AUDIO_FORMS}")


def generate_params(
    parameters: object, *, ignored: frozenset[str] = frozenset(), where: str = "parameters"
) -> GenerateParams:
    """A request's generation parameters: ``max_new_tokens``, ``num_beams`` and ``timeout``
    (microseconds, as OIP's; 0: none). Their ranges are the engine's to check (it knows the
    bundle's limits).

    Args:
        parameters: the body's ``parameters`` (None: none given).
        ignored: other keys accepted and ignored (``OIP_PARAMETERS`` on /infer and gRPC).
        where: how messages name the parameters.

    Raises:
        InvalidInput: not an object, an unknown key (named), or a timeout that is not a
            non-negative integer.
    """
    if parameters is None:
        return GenerateParams()
    if not isinstance(parameters, Mapping):
        raise InvalidInput(f"{where} must be an object, got {_json_type(parameters)}")
    known = _GENERATE_PARAMETERS | ignored
    unknown = sorted(str(key) for key in parameters if key not in known)
    if unknown:
        raise InvalidInput(f"unknown {where} {unknown}; accepted: {sorted(known)}")
    timeout = parameters.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 0
    ):
        raise InvalidInput(
            f"parameter 'timeout' must be a non-negative integer of microseconds (0: none), "
            f"got {timeout!r}"
        )
    beams = parameters.get("num_beams")
    return GenerateParams(
        max_new_tokens=parameters.get("max_new_tokens"),
        num_beams=1 if beams is None else beams,
        timeout_s=timeout / 1e6 if timeout else None,
    )


@dataclass(frozen=True, slots=True)
class GenerateBody:
    """A decoded ``/generate`` or ``/generate_stream`` body."""

    id: str | None
    audio: np.ndarray
    params: GenerateParams


def parse_generate_body(body: bytes) -> GenerateBody:
    """Decode a generate body: ``{"id"?, "audio", "parameters"?}``.

    Raises:
        InvalidInput: not a JSON object, an unknown key, no or bad ``audio``, a bad ``id`` or
            bad ``parameters`` (each message says what is expected).
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(
            f'the body is not JSON ({exc}); expected {{"audio": ..., "parameters": {{...}}}}'
        ) from None
    if not isinstance(document, dict):
        raise InvalidInput(
            f'the body is {_json_type(document)}; expected an object {{"audio": ..., ...}}'
        )
    unknown = sorted(set(document) - _BODY_KEYS)
    if unknown:
        raise InvalidInput(f"unknown keys {unknown} in the body; accepted: {sorted(_BODY_KEYS)}")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f"'id' must be a string, got {_json_type(request_id)}")
    if "audio" not in document:
        raise InvalidInput(f"the body has no 'audio'; expected {_AUDIO_FORMS}")
    audio = audio_samples(document["audio"])
    return GenerateBody(request_id, audio, generate_params(document.get("parameters")))


def _head(model: ModelInfo, request_id: str | None) -> dict[str, Any]:
    head: dict[str, Any] = {"model_name": model.name, "model_version": model.version}
    if request_id is not None:
        head["id"] = request_id
    return head


def generate_document(
    model: ModelInfo, request_id: str | None, result: GenerateResult
) -> dict[str, Any]:
    """``/generate``'s answer."""
    document = _head(model, request_id)
    document["tokens"] = list(result.tokens)
    if result.text is not None:
        document["text"] = result.text
    ttft = result.time_to_first_token_s
    document.update(
        finish_reason=result.finish_reason,
        output_tokens=len(result.tokens),
        timing={
            "queue_ms": round(result.queue_s * 1000, 3),
            "time_to_first_token_ms": None if ttft is None else round(ttft * 1000, 3),
            "total_ms": round(result.total_s * 1000, 3),
        },
    )
    return document


def event_document(
    model: ModelInfo, request_id: str | None, event: GenerationEvent
) -> dict[str, Any]:
    """One ``/generate_stream`` event (the last one has ``finish_reason``)."""
    document = _head(model, request_id)
    document.update(index=event.index, tokens=list(event.tokens))
    if event.text is not None:
        document["text"] = event.text
    if event.finish_reason is not None:
        document.update(finish_reason=event.finish_reason, output_tokens=event.output_tokens)
    return document


def sse(document: dict[str, Any]) -> bytes:
    """A server-sent event carrying ``document``."""
    return b"data: " + orjson.dumps(document) + b"\n\n"


def generation_outputs(result: GenerateResult, names: list[str]) -> list[tuple[str, np.ndarray]]:
    """A whole answer as the OIP outputs ``names`` (``tokens`` INT64 [n], ``text`` BYTES [1])."""
    arrays = {"tokens": np.asarray(result.tokens, dtype=np.int64)}
    if result.text is not None:
        text = np.empty(1, dtype=object)
        text[0] = result.text.encode()
        arrays["text"] = text
    return [(name, arrays[name]) for name in names]
