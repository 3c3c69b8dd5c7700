"""``generation.json``: what a generation bundle's encoder and decoder step are (shapes, special
tokens, the audio front end), and ``GenerateParams``, what one request asks for. Pure: read by
the seq2seq processor, the export script and blade alike, so that the three agree."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "DECODER_FILE",
    "ENCODER_FILE",
    "GENERATION_SPEC",
    "MAX_BEAMS",
    "TOKENIZER_FILE",
    "GenerateParams",
    "GenerationError",
    "GenerationSpec",
    "cache_names",
    "read_spec",
]

GENERATION_SPEC = "generation.json"
"""The file that makes a directory a generation bundle."""
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
TOKENIZER_FILE = "tokenizer.json"
MAX_BEAMS = 4


def cache_names(layers: int, kind: str) -> list[str]:
    """The per-layer key/value tensor names of the graphs, K then V per layer: ``kind`` is
    ``self`` (decoder inputs ``self_k.0``, ``self_v.0``, ...: ``[B, H, S, D]``), ``cross``
    (encoder outputs and decoder inputs, ``[B, H, F, D]``) or ``new`` (decoder outputs,
    ``[B, H, T, D]``). One tensor per layer, not one stacked tensor: ONNX Runtime copies a
    tensor that a graph slices, and the cross-attention cache is the largest input of a step."""
    return [f"{kind}_{kv}.{layer}" for layer in range(layers) for kv in ("k", "v")]


class GenerationError(ValueError):
    """A generation bundle or a request's parameters are not what they must be (the message says
    what was found and what is expected)."""


class GenerationSpec(BaseModel):
    """The content of ``generation.json``.

    Attributes:
        kind: ``seq2seq`` (an encoder run once, a decoder step run per token).
        architecture: ``whisper`` (log-mel audio in, token ids out).
        sample_rate, n_mels, n_fft, hop_length: the log-mel front end.
        n_samples: audio is padded or cut to this many samples (Whisper: 30 s); longer is refused.
        n_frames: mel frames the encoder takes (``n_samples // hop_length``).
        encoder_frames: the encoder's output positions (the cross-attention length).
        layers, heads, head_dim: the decoder's key/value cache geometry.
        vocab_size: the width of the logits.
        max_target_positions: the decoder's positional table: prompt + output tokens fit in it.
        decoder_start: the prompt every request starts from (start of transcript, language, task).
        eos_token_id: the end of the output.
        max_new_tokens: the default when a request does not say.
        source: where the weights come from (shown in /config).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["seq2seq"] = "seq2seq"
    architecture: Literal["whisper"] = "whisper"
    sample_rate: int = Field(default=16000, gt=0)
    n_mels: int = Field(default=80, gt=0)
    n_fft: int = Field(default=400, gt=0)
    hop_length: int = Field(default=160, gt=0)
    n_samples: int = Field(default=480000, gt=0)
    n_frames: int = Field(default=3000, gt=0)
    encoder_frames: int = Field(default=1500, gt=0)
    layers: int = Field(gt=0)
    heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    vocab_size: int = Field(gt=1)
    max_target_positions: int = Field(default=448, gt=1)
    decoder_start: tuple[int, ...] = Field(min_length=1)
    eos_token_id: int = Field(ge=0)
    max_new_tokens: int = Field(default=128, gt=0)
    source: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> GenerationSpec:
        if self.n_frames != self.n_samples // self.hop_length:
            raise ValueError(
                f"n_frames {self.n_frames} must be n_samples // hop_length "
                f"({self.n_samples} // {self.hop_length} = {self.n_samples // self.hop_length})"
            )
        tokens = (*self.decoder_start, self.eos_token_id)
        outside = [t for t in tokens if not 0 <= t < self.vocab_size]
        if outside:
            raise ValueError(
                f"token ids {outside} are outside the vocabulary [0, {self.vocab_size})"
            )
        if len(self.decoder_start) >= self.max_target_positions:
            raise ValueError(
                f"decoder_start has {len(self.decoder_start)} tokens; the decoder holds "
                f"{self.max_target_positions} positions in all"
            )
        return self

    @property
    def max_output(self) -> int:
        """The most tokens one answer can have (the positional table less the prompt)."""
        return self.max_target_positions - len(self.decoder_start)

    @property
    def max_seconds(self) -> float:
        return self.n_samples / self.sample_rate


def read_spec(root: Path) -> GenerationSpec:
    """The ``generation.json`` of a bundle directory, checked.

    Raises:
        GenerationError: the file is missing, not JSON, or not a valid spec (pydantic's message).
    """
    path = root / GENERATION_SPEC
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise GenerationError(
            f"{root} is not a generation bundle: no {GENERATION_SPEC} (expected it beside "
            f"{ENCODER_FILE} and {DECODER_FILE})"
        ) from None
    except (OSError, ValueError) as exc:
        raise GenerationError(f"{path} cannot be read as JSON: {exc}") from exc
    try:
        return GenerationSpec.model_validate(document)
    except ValidationError as exc:
        raise GenerationError(f"{path} is not a valid generation spec: {exc}") from exc


@dataclass(frozen=True, slots=True)
class GenerateParams:
    """What one request asks for.

    Attributes:
        max_new_tokens: the most output tokens (None: the bundle's default); the end-of-sequence
            token is not counted and not returned.
        num_beams: 1 = greedy; 2..4 = beam search of that width.
        timeout_s: the request's deadline, counted from its arrival (None: none). Reached while
            waiting: the request fails (503); reached while decoding: the answer so far, with
            ``finish_reason`` ``deadline``.
    """

    max_new_tokens: int | None = None
    num_beams: int = 1
    timeout_s: float | None = None

    def resolve(self, spec: GenerationSpec) -> GenerateParams:
        """The parameters with defaults filled in and checked against the bundle.

        Raises:
            GenerationError: a value out of range (the message says the allowed range).
        """
        limit = spec.max_output
        wanted = spec.max_new_tokens if self.max_new_tokens is None else self.max_new_tokens
        if isinstance(wanted, bool) or not isinstance(wanted, int) or not 1 <= wanted <= limit:
            raise GenerationError(
                f"max_new_tokens must be an integer in [1, {limit}] (the decoder holds "
                f"{spec.max_target_positions} positions, {len(spec.decoder_start)} for the "
                f"prompt), got {wanted!r}"
            )
        beams = self.num_beams
        if isinstance(beams, bool) or not isinstance(beams, int) or not 1 <= beams <= MAX_BEAMS:
            raise GenerationError(
                f"num_beams must be an integer in [1, {MAX_BEAMS}] (1: greedy), got {beams!r}"
            )
        timeout = self.timeout_s
        if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
            raise GenerationError(f"timeout must be a positive duration, got {timeout!r}")
        return GenerateParams(wanted, beams, timeout)
