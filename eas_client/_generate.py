"""The generate extension from the client side, pure: request bodies, answers, SSE events.

A generative model (eas-server's ``seq2seq`` processor, Whisper-shaped) answers two routes next
to ``/infer``, as Triton's generate extension does:

```
POST /v2/models/{m}[/versions/{v}]/generate         -> 200 JSON, the whole answer
POST /v2/models/{m}[/versions/{v}]/generate_stream  -> 200 text/event-stream, an event per token
body: {"id"?, "audio": "<base64 of float32 little-endian samples>",
       "parameters": {"max_new_tokens"?, "num_beams", "timeout": microseconds}}
```

Audio goes as base64 of float32 little-endian bytes: 5.3 bytes a sample instead of the 10 to 12
of a JSON list of floats. The server decodes 16 kHz mono samples in [-1, 1]; integer PCM (int16
samples in the thousands) would be accepted as floats and transcribed as noise, so the client
refuses integer arrays before sending anything.

The event stream is Server-Sent Events: an event is a group of lines ending with a blank line;
its ``data:`` lines (joined with newlines) carry one JSON object; comments (``:``) and other
fields are ignored. Each event adds ``tokens`` (and ``text`` with a tokenizer); the last one has
``finish_reason`` and ``output_tokens`` and no tokens; ``{"error": ...}`` ends a stream that
failed after it started. ``SseDecoder`` is incremental (bytes in as they arrive, complete events
out), so the clients' I/O shells (``_client``, ``_async``) only move bytes; the retry decisions
are ``_base``'s.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import orjson

from ._errors import ProtocolError, ServerError

__all__ = [
    "GenerateChunk",
    "GenerateRequest",
    "GenerateResult",
    "SseDecoder",
    "encode_audio",
    "parse_chunk",
    "parse_result",
]

_EOL: Final = re.compile(rb"\r\n|\r|\n")
_MAX_LINE: Final = 16 << 20
"""A line longer than this (no end of line in 16 MiB) is not an event stream."""
_TIMING_KEYS: Final = ("queue_ms", "time_to_first_token_ms", "total_ms")
_FINISH_REASONS: Final = frozenset({"eos", "length", "deadline"})


@dataclass(frozen=True, slots=True)
class GenerateResult:
    """A whole answer of ``generate``.

    Attributes:
        tokens: the output token ids (the prompt and the end-of-sequence token not included).
        text: the tokens as text, when the model has a tokenizer; else ``None``.
        finish_reason: ``eos`` (the model ended), ``length`` (``max_new_tokens`` reached) or
            ``deadline`` (the call's deadline came first: ``tokens`` is what was ready).
        output_tokens: ``len(tokens)``, as the server counted them.
        timing: the server's figures, in milliseconds: ``queue_ms`` (waiting for a slot),
            ``time_to_first_token_ms`` and ``total_ms``, from the request's arrival (a key is
            absent when the server did not give it, e.g. no first token).
        model_name: the model that answered.
        model_version: its version, when the server names one.
        id: the request's ``id``, echoed.
    """

    tokens: tuple[int, ...]
    text: str | None
    finish_reason: str
    output_tokens: int
    timing: Mapping[str, float] = field(default_factory=dict)
    model_name: str = ""
    model_version: str | None = None
    id: str | None = None


@dataclass(frozen=True, slots=True)
class GenerateChunk:
    """One event of ``generate_stream``.

    Attributes:
        index: the output position of the first of ``tokens`` (the count of tokens before).
        tokens: the new output token ids (empty in the final event).
        text: the text they add, when the model has a tokenizer (may be ``""`` while a
            character spans tokens); else ``None``.
        finish_reason: ``None`` but in the final event: ``eos``, ``length`` or ``deadline``.
        output_tokens: in the final event, the answer's length; else ``None``.
        model_name: the model that answered.
        model_version: its version, when the server names one.
    """

    index: int
    tokens: tuple[int, ...]
    text: str | None = None
    finish_reason: str | None = None
    output_tokens: int | None = None
    model_name: str = ""
    model_version: str | None = None


# ---------------------------------------------------------------------------------- request


def encode_audio(audio: object) -> str:
    """Base64 of ``audio`` as float32 little-endian samples (the ``audio`` of a generate body).

    Args:
        audio: 1-D samples in [-1, 1] at the model's rate (16 kHz for Whisper): a numpy array
            of a floating dtype, or a sequence of Python floats. Converted to float32.

    Returns:
        The base64 text (ASCII).

    Raises:
        ProtocolError: integer, boolean, complex or non-numeric samples (integer PCM must be
            scaled to [-1, 1] first, e.g. ``int16 / 32768``), not 1-D, empty, or NaN/inf.
    """
    if isinstance(audio, str | bytes | bytearray | memoryview):
        raise ProtocolError(
            f"audio must be 1-D float samples in [-1, 1] (a numpy float array or a list of "
            f"floats), got {type(audio).__name__}"
        )
    try:
        array = np.asarray(audio)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"audio cannot be read as an array of samples: {exc}") from exc
    kind = array.dtype.kind
    if kind in "iub":
        raise ProtocolError(
            f"audio has {array.dtype} samples; expected float samples in [-1, 1] (FP32 at the "
            "model's sample rate): scale integer PCM first, e.g. int16 / 32768"
        )
    if kind != "f":
        raise ProtocolError(f"audio must hold float samples in [-1, 1], got dtype {array.dtype}")
    if array.ndim != 1:
        raise ProtocolError(
            f"audio must be 1-D (one mono utterance), got shape {list(array.shape)}"
        )
    if array.size == 0:
        raise ProtocolError("audio is empty; expected at least one sample")
    samples = np.ascontiguousarray(array, dtype="<f4")
    if not np.isfinite(samples).all():
        first = int(np.flatnonzero(~np.isfinite(samples))[0])
        raise ProtocolError(f"audio sample {first} is {samples[first]}; samples must be finite")
    return base64.b64encode(samples.data).decode("ascii")


def _count(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


class GenerateRequest:
    """One generate call's request, checked once; its body is made per attempt (the deadline
    sent to the server is the time the call has left).

    Args:
        audio: see :func:`encode_audio`.
        max_new_tokens: the most output tokens (``None``: the model's default).
        num_beams: 1 = greedy, more = beam search of that width (the server allows 1 to 4).
        request_id: sent as ``id`` and echoed by the server.

    Raises:
        ProtocolError: the audio (see :func:`encode_audio`).
        ValueError: ``max_new_tokens`` or ``num_beams`` is not an integer >= 1, or
            ``request_id`` is not a string.
    """

    __slots__ = ("_head", "_tail")

    def __init__(
        self,
        audio: object,
        *,
        max_new_tokens: int | None = None,
        num_beams: int = 1,
        request_id: str | None = None,
    ):
        params: dict[str, Any] = {"num_beams": _count(num_beams, "num_beams", 1)}
        if max_new_tokens is not None:
            params["max_new_tokens"] = _count(max_new_tokens, "max_new_tokens", 1)
        if request_id is not None and not isinstance(request_id, str):
            raise ValueError(f"request_id must be a string, got {type(request_id).__name__}")
        head: dict[str, Any] = {} if request_id is None else {"id": request_id}
        # The body is head + audio + parameters with the timeout: the audio (megabytes for
        # 30 s) is serialized once; each attempt only writes the parameters.
        head["audio"] = encode_audio(audio)
        self._head = orjson.dumps(head)[:-1]  # without the closing brace
        self._tail = params

    def body(self, timeout_s: float) -> bytes:
        """The JSON body with ``timeout`` (microseconds) = ``timeout_s``, the deadline the
        server applies from the request's arrival."""
        params = {**self._tail, "timeout": max(1, math.floor(timeout_s * 1e6))}
        return self._head + b',"parameters":' + orjson.dumps(params) + b"}"


# --------------------------------------------------------------------------------- answers


def _document(content: bytes | str, what: str) -> dict[str, Any]:
    try:
        document = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ProtocolError(f"{what} must be a JSON object, got {type(document).__name__}")
    return document


def _tokens(document: Mapping[str, Any], what: str) -> tuple[int, ...]:
    tokens = document.get("tokens")
    if not isinstance(tokens, list) or not all(
        type(t) is int and t >= 0 for t in tokens
    ):  # bool is not int here: type() is
        raise ProtocolError(f"{what}: 'tokens' must be a list of token ids, got {tokens!r}")
    return tuple(tokens)


def _optional(document: Mapping[str, Any], key: str, kind: type, what: str) -> Any:
    value = document.get(key)
    if value is not None and type(value) is not kind:
        raise ProtocolError(f"{what}: {key!r} must be a {kind.__name__}, got {value!r}")
    return value


def _reason(document: Mapping[str, Any], what: str) -> str | None:
    reason = document.get("finish_reason")
    if reason is not None and reason not in _FINISH_REASONS:
        raise ProtocolError(
            f"{what}: 'finish_reason' must be one of eos, length, deadline, got {reason!r}"
        )
    return reason


def _version(document: Mapping[str, Any]) -> str | None:
    version = document.get("model_version")
    return version if isinstance(version, str) and version else None


def parse_result(content: bytes) -> GenerateResult:
    """The answer of ``/generate`` (a 200 body).

    Raises:
        ProtocolError: not the JSON object the generate extension answers.
    """
    what = "the generate answer"
    document = _document(content, what)
    tokens = _tokens(document, what)
    reason = _reason(document, what)
    if reason is None:
        raise ProtocolError(f"{what} has no 'finish_reason'")
    count = _optional(document, "output_tokens", int, what)
    timing = document.get("timing") or {}
    if not isinstance(timing, dict):
        raise ProtocolError(f"{what}: 'timing' must be an object, got {timing!r}")
    return GenerateResult(
        tokens=tokens,
        text=_optional(document, "text", str, what),
        finish_reason=reason,
        output_tokens=len(tokens) if count is None else count,
        timing={
            k: float(timing[k])
            for k in _TIMING_KEYS
            if isinstance(timing.get(k), int | float) and not isinstance(timing.get(k), bool)
        },
        model_name=str(document.get("model_name") or ""),
        model_version=_version(document),
        id=_optional(document, "id", str, what),
    )


def parse_chunk(data: str) -> GenerateChunk:
    """One event of ``/generate_stream`` (its ``data``).

    Raises:
        ServerError: the event is ``{"error": ...}``: the generation failed after the stream
            started (status 500; the HTTP status was 200).
        ProtocolError: not an event of the generate extension.
    """
    what = "a generate_stream event"
    document = _document(data, what)
    if "error" in document:
        raise ServerError(
            f"the stream failed after it started: {document['error']}", status_code=500
        )
    index = document.get("index")
    if type(index) is not int or index < 0:
        raise ProtocolError(f"{what}: 'index' must be an integer >= 0, got {index!r}")
    return GenerateChunk(
        index=index,
        tokens=_tokens(document, what),
        text=_optional(document, "text", str, what),
        finish_reason=_reason(document, what),
        output_tokens=_optional(document, "output_tokens", int, what),
        model_name=str(document.get("model_name") or ""),
        model_version=_version(document),
    )


class SseDecoder:
    """Server-Sent Events, incrementally: feed bytes as they arrive, get complete events' data.

    Lines end with CRLF, LF or CR (a CR at the end of one feed and an LF at the start of the
    next are one line end). A blank line ends an event; its ``data`` lines, each less one
    leading space, joined with LF, are its data; an event without data is dropped; comments
    (lines starting with ``:``) and other fields (``event``, ``id``, ``retry``) are ignored.
    """

    __slots__ = ("_buffer", "_data", "_skip_lf")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] | None = None
        self._skip_lf = False

    def feed(self, data: bytes) -> list[str]:
        """The data of the events that ``data`` completes, in order.

        Raises:
            ProtocolError: a line that is not UTF-8, or longer than 16 MiB.
        """
        buffer = self._buffer + data if self._buffer else data
        position = 0
        if self._skip_lf and buffer[:1] == b"\n":
            position = 1
        if buffer:
            self._skip_lf = False
        events: list[str] = []
        while True:
            end = _EOL.search(buffer, position)
            if end is None:
                break
            if end.end() == len(buffer) and end.group() == b"\r":
                self._skip_lf = True  # an LF may follow in the next feed
            self._line(buffer[position : end.start()], events)
            position = end.end()
        self._buffer = buffer[position:]
        if len(self._buffer) > _MAX_LINE:
            raise ProtocolError("the event stream has a line longer than 16 MiB")
        return events

    @property
    def pending(self) -> bool:
        """Whether part of an event has been read (the stream ended in the middle of one)."""
        return bool(self._buffer) or self._data is not None

    def _line(self, line: bytes, events: list[str]) -> None:
        if not line:
            if self._data is not None:
                events.append("\n".join(self._data))
                self._data = None
            return
        if line[:1] == b":":
            return  # a comment (keep-alive)
        name, _, value = line.partition(b":")
        if name != b"data":
            return
        if value[:1] == b" ":
            value = value[1:]
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"an event of the stream is not UTF-8: {exc}") from exc
        if self._data is None:
            self._data = [text]
        else:
            self._data.append(text)
