#!/usr/bin/env python3
"""Export a Whisper-shaped encoder-decoder to ONNX as a generation bundle, checked against torch.

    python scripts/whisper_export.py --size tiny|base|micro --out DIR [--seed 0] [--no-check]

Writes into DIR what the "Model directory" of the generation contract lists:

- `encoder.onnx`: `input_features` FP32 [B, n_mels, 3000] -> per decoder layer l `cross_k.l`,
  `cross_v.l` FP32 [B, H, F, D]: transformers' Whisper encoder, then each decoder layer's
  cross-attention K and V projections of its output, heads split (F = 1500 encoder frames).
- `decoder.onnx`: `tokens` INT64 [B, T], `positions` INT64 [B], `self_k.l`, `self_v.l` FP32
  [B, H, S, D], `cross_k.l`, `cross_v.l` -> `logits` FP32 [B, T, V], `new_k.l`, `new_v.l` FP32
  [B, H, T, D]. Token t of row b sits at position positions[b] + t, attends to the cache entries
  j < positions[b] of its row and causally to the new tokens; the caller writes the new keys and
  values at [positions[b], positions[b] + T). B, T and S are dynamic (S may be 0); F is fixed.
  One tensor per layer (not one stacked cache): ONNX Runtime copies whatever a graph slices, and
  slicing a stacked cross-attention cache cost 5x the rest of a step at batch 16.
- `generation.json`: the `GenerationSpec` document (`generation_spec` below, a pure function).

Weights: `torch.manual_seed(seed)`, `WhisperForConditionalGeneration(config)`, then redrawn at
scales where each bias, norm and attention shows (`spread_weights`): random, not a trained model
(no hub is reachable). Sizes: `tiny` and `base` are openai/whisper-tiny and -base
shapes (multilingual vocabulary, 80 mel bins, 1500 source and 448 target positions); `micro`
(d_model 64, 2 + 2 layers) keeps the vocabulary and positions so that tests export in seconds.

Why our own decoder module rather than exporting transformers' forward: its cache classes are
Python objects that the TorchScript tracer handles badly, and, traced, its mask builder keeps
trace-time shapes (build_models.py saw that with BERT). The wrappers below reuse the model's
weights and do Whisper's arithmetic (pre-LN, q scaled after its projection, k_proj without bias,
exact GELU, tied output embedding) with all shapes taken from tensors, so one graph serves every
B, T and S. Cache entries at or past positions[b] are masked with -1e9 (never -inf), so whatever
finite values they hold cannot reach the logits: a row's answer does not depend on the rest of
the batch. They must be finite (NaN times a zero weight is NaN): the server's caches start at
zero and only ever hold the model's own keys and values. Zeroing them in the graph would allow
any garbage but cost a tenth of a decoder step at batch 16 on the CPU.

Checks, each a max abs difference that must stay under `MAX_DIFF` (else `ExportCheckFailed` with
the figures): the ONNX encoder against the torch wrapper; teacher-forced logits of the ONNX pair
(onnxruntime) against `WhisperForConditionalGeneration` (its encoder run once per input, its
output passed as `encoder_outputs` with `decoder_input_ids`) at several target lengths, both as
one chunk (S = 0) and as a prefill of the start tokens followed by single-token steps over a
garbage-filled cache buffer; a batch of 3 rows at different positions with garbage past each
row's cache against each row run alone and against torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from eas_server.generation._spec import cache_names

OPSET = 17
MAX_DIFF = 1e-3  # fp32 export vs torch; a wrong mask, position or baked shape gives errors of ~0.1
NEG = -1e9  # additive mask: large and finite, so fp32 softmax never sees inf - inf
CHECK_LENGTHS = (4, 9, 23)  # teacher-forced target lengths (the first 4 are the start tokens)
TORCH_HINT = "pip install torch==2.13.0 'transformers>=5,<6'  (or: pip install -e '.[models]')"

# Shapes of openai/whisper-{tiny,base}; "micro" is ours, for tests.
SIZES: dict[str, dict[str, int]] = {
    "micro": {"d_model": 64, "layers": 2, "heads": 4, "ffn": 128},
    "tiny": {"d_model": 384, "layers": 4, "heads": 6, "ffn": 1536},
    "base": {"d_model": 512, "layers": 6, "heads": 8, "ffn": 2048},
}
VOCAB_SIZE = 51865
N_MELS = 80
ENCODER_FRAMES = 1500  # max_source_positions; the convolutions halve 3000 mel frames to these
MAX_TARGET_POSITIONS = 448
EOS = 50257  # <|endoftext|> of the multilingual vocabulary
# <|startoftranscript|> (the config's decoder_start_token_id), <|en|>, <|transcribe|>,
# <|notimestamps|>
DECODER_START = (50258, 50259, 50359, 50363)
MAX_NEW_TOKENS = 128
SAMPLE_RATE, N_FFT, HOP_LENGTH = 16000, 400, 160

ENCODER_INPUTS = ["input_features"]


def encoder_outputs(layers: int) -> list[str]:
    return cache_names(layers, "cross")


def decoder_inputs(layers: int) -> list[str]:
    return ["tokens", "positions", *cache_names(layers, "self"), *cache_names(layers, "cross")]


def decoder_outputs(layers: int) -> list[str]:
    return ["logits", *cache_names(layers, "new")]


Array = npt.NDArray[Any]


class ExportCheckFailed(RuntimeError):
    """An exported graph differs from torch by more than `MAX_DIFF`; `figures` has every check."""

    def __init__(self, figures: dict[str, float], failed: list[str]) -> None:
        self.figures = figures
        shown = ", ".join(f"{k} {figures[k]:.3g}" for k in failed)
        super().__init__(f"ONNX differs from torch by more than {MAX_DIFF} (max abs): {shown}")


def _size(size: str) -> dict[str, int]:
    if size not in SIZES:
        raise ValueError(f"unknown Whisper size {size!r}: expected one of {', '.join(SIZES)}")
    return SIZES[size]


def generation_spec(size: str = "tiny", seed: int = 0) -> dict[str, Any]:
    """The `generation.json` document of a bundle of this size and seed (pure)."""
    shape = _size(size)
    n_frames = 2 * ENCODER_FRAMES
    return {
        "kind": "seq2seq",
        "architecture": "whisper",
        "sample_rate": SAMPLE_RATE,
        "n_mels": N_MELS,
        "n_fft": N_FFT,
        "hop_length": HOP_LENGTH,
        "n_samples": n_frames * HOP_LENGTH,
        "n_frames": n_frames,
        "encoder_frames": ENCODER_FRAMES,
        "layers": shape["layers"],
        "heads": shape["heads"],
        "head_dim": shape["d_model"] // shape["heads"],
        "vocab_size": VOCAB_SIZE,
        "max_target_positions": MAX_TARGET_POSITIONS,
        "decoder_start": list(DECODER_START),
        "eos_token_id": EOS,
        "max_new_tokens": MAX_NEW_TOKENS,
        "source": (
            f"transformers WhisperConfig {size}, torch.manual_seed({seed}), weights redrawn"
            " at fan-in scales (random, not a trained model)"
        ),
    }


def whisper_config(size: str) -> Any:
    """A `transformers.WhisperConfig` of this size, eager attention, multilingual special tokens."""
    from transformers import WhisperConfig

    shape = _size(size)
    config = WhisperConfig(
        vocab_size=VOCAB_SIZE,
        num_mel_bins=N_MELS,
        d_model=shape["d_model"],
        encoder_layers=shape["layers"],
        decoder_layers=shape["layers"],
        encoder_attention_heads=shape["heads"],
        decoder_attention_heads=shape["heads"],
        encoder_ffn_dim=shape["ffn"],
        decoder_ffn_dim=shape["ffn"],
        max_source_positions=ENCODER_FRAMES,
        max_target_positions=MAX_TARGET_POSITIONS,
        # WhisperConfig's defaults are the English-only vocabulary's ids; these are
        # openai/whisper-tiny's (multilingual), the ids that generation.json names.
        decoder_start_token_id=DECODER_START[0],
        bos_token_id=EOS,
        eos_token_id=EOS,
        pad_token_id=EOS,
    )
    config._attn_implementation = "eager"
    return config


def spread_weights(model: Any) -> None:
    """Redraw `model`'s weights, from torch's current random stream, at scales where each shows.

    transformers initialises biases to 0, LayerNorms to (1, 0) and weights at std 0.02. At those,
    a dropped bias or a swapped norm changes nothing, attention is uniform and the logits hardly
    depend on the audio (0.008 max abs between two inputs): the checks could not see such errors.
    Here: Linear and Conv1d weights N(0, 4/fan_in) (at 1/fan_in greedy decoding still repeats one
    token whatever the audio; at 4/fan_in the tokens vary with the audio and from step to step, so
    that tests of batching and beams compare different answers); attention q and k N(0, 2/d_model)
    (scores of std ~2); biases N(0, 0.1); LayerNorm gains N(1, 0.2) and shifts N(0, 0.1); the
    token and the decoder's position tables N(0, 1/d_model). Then (micro and tiny) two random
    inputs differ by 0.1-0.2 in the logits, so does a permutation of the audio frames, and
    positions shifted by one by ~3: over 100 x `MAX_DIFF`.
    """
    import torch
    from torch import nn

    d_model = model.config.d_model
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.0, 0.1)
            elif isinstance(module, nn.Linear | nn.Conv1d):
                module.weight.normal_(0.0, 2.0 * module.weight[0].numel() ** -0.5)
                if module.bias is not None:
                    module.bias.normal_(0.0, 0.1)
        for module in model.modules():
            if hasattr(module, "q_proj") and hasattr(module, "k_proj"):
                module.q_proj.weight.normal_(0.0, (2.0 / d_model) ** 0.5)
                module.k_proj.weight.normal_(0.0, (2.0 / d_model) ** 0.5)
        decoder = model.model.decoder
        decoder.embed_tokens.weight.normal_(0.0, d_model**-0.5)
        decoder.embed_positions.weight.normal_(0.0, d_model**-0.5)


def _wrappers(model: Any) -> tuple[Any, Any]:
    """(Encoder, DecoderStep) torch modules over `model`'s weights, in eval mode."""
    import torch
    from torch import nn

    config = model.config
    heads, d_model = config.decoder_attention_heads, config.d_model
    head_dim = d_model // heads
    scaling = head_dim**-0.5
    decoder = model.model.decoder

    def split(x: Any) -> Any:  # [B, N, d_model] -> [B, H, N, D]
        return x.reshape(x.shape[0], x.shape[1], heads, head_dim).transpose(1, 2)

    def attend(q: Any, k: Any, v: Any, mask: Any) -> Any:  # -> [B, T, d_model]
        scores = torch.matmul(q, k.transpose(-1, -2))  # q is already scaled, as Whisper does
        if mask is not None:
            scores = scores + mask
        out = torch.matmul(torch.softmax(scores, dim=-1), v)
        return out.transpose(1, 2).reshape(out.shape[0], out.shape[2], d_model)

    class Encoder(nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.encoder = model.model.encoder
            self.k_proj = nn.ModuleList(layer.encoder_attn.k_proj for layer in decoder.layers)
            self.v_proj = nn.ModuleList(layer.encoder_attn.v_proj for layer in decoder.layers)

        def forward(self, input_features: Any) -> tuple[Any, ...]:
            hidden = self.encoder(input_features=input_features).last_hidden_state
            out: list[Any] = []
            for k, v in zip(self.k_proj, self.v_proj, strict=True):
                out += [split(k(hidden)), split(v(hidden))]  # cross_k.l, cross_v.l: [B, H, F, D]
            return tuple(out)

    class DecoderStep(nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            # The token table transposed, [d_model, V]: the output projection (Whisper ties it
            # to the token embedding) multiplies by it as it is, and the token lookup gathers
            # its columns. Used both ways, it is one initializer in the graph; with the [V, d]
            # table, the exporter would fold a transposed second copy for the MatMul.
            table = decoder.embed_tokens.weight.detach().t().contiguous()
            self.output_embedding = nn.Parameter(table, requires_grad=False)
            self.embed_positions = decoder.embed_positions
            self.layers = decoder.layers
            self.layer_norm = decoder.layer_norm
            self.embed_scale = float(decoder.embed_scale)

        def forward(self, tokens: Any, positions: Any, *caches: Any) -> tuple[Any, ...]:
            count = len(self.layers)
            self_kv, cross_kv = caches[: 2 * count], caches[2 * count :]
            # Index ramps from cumsum over tensors of the right shape, not from Python ints:
            # traced, `arange(x.shape[i])` may keep the trace-time length.
            offsets = torch.cumsum(torch.ones_like(tokens), dim=1) - 1  # [B, T]: 0..T-1
            slots = torch.ones_like(self_kv[0][:, 0, :, 0], dtype=torch.int64)
            slots = torch.cumsum(slots, dim=1) - 1  # [B, S]: 0..S-1
            start = positions.unsqueeze(1)
            valid = slots < start  # [B, S]: the row's cache entries
            causal = offsets.unsqueeze(1) <= offsets.unsqueeze(2)  # [B, T, T]: key t' <= query t
            allowed = torch.cat((valid.unsqueeze(1) & (offsets >= 0).unsqueeze(2), causal), dim=2)
            mask = ((allowed.to(torch.float32) - 1.0) * -NEG).unsqueeze(1)  # [B, 1, T, S + T]
            cache = self_kv  # entries past a row's position: finite, masked (module docstring)

            pos_emb = nn.functional.embedding(start + offsets, self.embed_positions.weight)
            columns = torch.index_select(self.output_embedding, 1, tokens.flatten())
            tok_emb = columns.t().reshape(tokens.shape[0], tokens.shape[1], d_model)
            hidden = tok_emb * self.embed_scale + pos_emb
            new_kv: list[Any] = []
            for index, layer in enumerate(self.layers):
                attn = layer.self_attn
                x = layer.self_attn_layer_norm(hidden)
                q = split(attn.q_proj(x) * scaling)
                k, v = split(attn.k_proj(x)), split(attn.v_proj(x))
                new_kv += [k, v]
                keys = torch.cat((cache[2 * index], k), dim=2)
                values = torch.cat((cache[2 * index + 1], v), dim=2)
                hidden = hidden + attn.out_proj(attend(q, keys, values, mask))

                cross = layer.encoder_attn
                x = layer.encoder_attn_layer_norm(hidden)
                q = split(cross.q_proj(x) * scaling)
                ctx = attend(q, cross_kv[2 * index], cross_kv[2 * index + 1], None)
                hidden = hidden + cross.out_proj(ctx)

                x = layer.final_layer_norm(hidden)
                hidden = hidden + layer.fc2(layer.activation_fn(layer.fc1(x)))
            hidden = self.layer_norm(hidden)
            logits = torch.matmul(hidden, self.output_embedding)
            return (logits, *new_kv)  # [B, T, V], new_k.l / new_v.l: [B, H, T, D]

    return Encoder().eval(), DecoderStep().eval()


def _export(module: Any, args: tuple[Any, ...], path: Path, names: tuple[list[str], list[str]],
            axes: dict[str, dict[int, str]]) -> None:  # fmt: skip
    import torch

    tmp = path.with_name(path.name + ".tmp")
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about Python-side shape checks (transformers' encoder checks its 3000
        # frames) and the exporter about its own deprecation: F is fixed by design, and the
        # graphs are checked against torch below.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(tmp),
            dynamo=False,
            opset_version=OPSET,
            input_names=names[0],
            output_names=names[1],
            dynamic_axes=axes,
        )
    os.replace(tmp, path)


def _max_abs(a: Array, b: Array) -> float:
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float(diff.max()) if np.isfinite(diff).all() else float("inf")


def _garbage(rng: np.random.Generator, shape: Iterable[int]) -> Array:
    """A cache buffer full of what must be ignored: large finite values."""
    return (rng.standard_normal(tuple(shape)) * 1e4).astype(np.float32)


class _Pair:
    """The ONNX encoder and decoder under onnxruntime, called with numpy arrays."""

    def __init__(self, out_dir: Path) -> None:
        import onnxruntime as ort

        opts = {"providers": ["CPUExecutionProvider"]}
        self.encoder = ort.InferenceSession(str(out_dir / "encoder.onnx"), **opts)
        self.decoder = ort.InferenceSession(str(out_dir / "decoder.onnx"), **opts)

    def encode(self, features: Array) -> Array:
        """Stacked for the checks: [B, L, 2, H, F, D]."""
        return _stack(self.encoder.run(None, {"input_features": features}))

    def decode(self, tokens: Array, positions: Array, cache: Array, cross: Array) -> list[Array]:
        """Caches stacked [B, L, 2, H, S, D] in, the new keys/values stacked out."""
        layers = cache.shape[1]
        feed = {"tokens": tokens, "positions": positions}
        feed.update(_unstack(cache, cache_names(layers, "self")))
        feed.update(_unstack(cross, cache_names(layers, "cross")))
        logits, *new = self.decoder.run(None, feed)
        return [logits, _stack(new)]


def _stack(per_layer: list[Array]) -> Array:
    """[k.0, v.0, k.1, ...] of [B, H, N, D] -> [B, L, 2, H, N, D]."""
    pairs = [np.stack(per_layer[i : i + 2], axis=1) for i in range(0, len(per_layer), 2)]
    return np.ascontiguousarray(np.stack(pairs, axis=1))


def _unstack(stacked: Array, names: list[str]) -> dict[str, Array]:
    layers = stacked.shape[1]
    return {
        names[2 * layer + kv]: np.ascontiguousarray(stacked[:, layer, kv])
        for layer in range(layers)
        for kv in (0, 1)
    }


def _check(model: Any, encoder: Any, out_dir: Path, rng: np.random.Generator) -> dict[str, float]:
    """Max abs differences of the exported pair against torch (see the module docstring)."""
    import torch

    pair = _Pair(out_dir)
    cfg = model.config
    layers, heads = cfg.decoder_layers, cfg.decoder_attention_heads
    head_dim = cfg.d_model // heads

    def empty(batch: int, length: int = 0) -> Array:
        return np.zeros((batch, layers, 2, heads, length, head_dim), np.float32)

    def sequences(batch: int, length: int) -> Array:
        body = rng.integers(0, EOS, size=(batch, length - len(DECODER_START)))
        start = np.broadcast_to(np.array(DECODER_START), (batch, len(DECODER_START)))
        return np.concatenate([start, body], axis=1).astype(np.int64)

    figures: dict[str, float] = {}
    features = (rng.standard_normal((3, cfg.num_mel_bins, 2 * ENCODER_FRAMES)) * 0.5).astype(
        np.float32
    )
    with torch.no_grad():  # the model's encoder once; its output serves every reference call
        audio = model.model.encoder(input_features=torch.from_numpy(features)).last_hidden_state

    def reference(ids: Array) -> Array:
        """The model's teacher-forced logits for the first len(ids) rows of `features`."""
        with torch.no_grad():
            out = model(
                encoder_outputs=(audio[: len(ids)],),
                decoder_input_ids=torch.from_numpy(ids),
                use_cache=False,
            )
        logits: Array = out.logits.numpy()
        return logits

    cross = pair.encode(features)
    with torch.no_grad():
        expected_cross = _stack([t.numpy() for t in encoder(torch.from_numpy(features))])
    figures["encoder"] = _max_abs(cross, expected_cross)

    chunk, steps, scale = 0.0, 0.0, 0.0
    for n in CHECK_LENGTHS:
        ids = sequences(2, n)
        ref = reference(ids)
        scale = max(scale, float(np.abs(ref).max()))
        zero = np.zeros(2, np.int64)
        logits, _ = pair.decode(ids, zero, empty(2), cross[:2])
        chunk = max(chunk, _max_abs(logits, ref))
        # Prefill of the start tokens, then one token a step over a garbage-filled buffer.
        prefix = len(DECODER_START)
        buffer = _garbage(rng, empty(2, n).shape)
        logits, kv = pair.decode(ids[:, :prefix], zero, empty(2), cross[:2])
        buffer[:, :, :, :, :prefix] = kv
        got = [logits]
        for t in range(prefix, n):
            at = np.full(2, t, np.int64)
            logits, kv = pair.decode(ids[:, t : t + 1], at, buffer, cross[:2])
            buffer[:, :, :, :, t : t + 1] = kv
            got.append(logits)
        steps = max(steps, _max_abs(np.concatenate(got, axis=1), ref))
    figures["chunk"], figures["steps"] = chunk, steps

    # Three rows at different positions, two new tokens each, garbage past each row's cache.
    starts, new, length = (4, 11, 17), 2, max(CHECK_LENGTHS)
    ids = sequences(3, length)
    ref = reference(ids)
    batch_cache = _garbage(rng, empty(3, max(starts) + 3).shape)
    alone: list[list[Array]] = []
    for row, p in enumerate(starts):
        _, kv = pair.decode(
            ids[row : row + 1, :p], np.zeros(1, np.int64), empty(1), cross[row : row + 1]
        )
        batch_cache[row, :, :, :, :p] = kv[0]
        at = np.array([p], np.int64)
        alone.append(pair.decode(ids[row : row + 1, p : p + new], at, kv, cross[row : row + 1]))
    tokens = np.stack([ids[row, p : p + new] for row, p in enumerate(starts)])
    logits, kv = pair.decode(tokens, np.array(starts, np.int64), batch_cache, cross)
    figures["batch_vs_alone"] = max(
        max(_max_abs(logits[row], solo[0][0]), _max_abs(kv[row], solo[1][0]))
        for row, solo in enumerate(alone)
    )
    figures["batch_vs_torch"] = max(
        _max_abs(logits[row], ref[row, p : p + new]) for row, p in enumerate(starts)
    )
    scale = max(scale, float(np.abs(ref).max()))
    figures["logits_max_abs"] = scale  # the size of what is compared, for the record
    return figures


def _write_json(path: Path, document: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _model(size: str, seed: int) -> Any:
    """The seeded transformers model of `size`, weights spread (see `spread_weights`), eval."""
    _size(size)
    try:
        import torch
        from transformers import WhisperForConditionalGeneration
    except ImportError as exc:
        raise ImportError(f"{exc.name or exc} is needed to export Whisper: {TORCH_HINT}") from exc

    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(whisper_config(size)).eval()
    spread_weights(model)
    return model


def _check_figures(model: Any, encoder: Any, out_dir: Path, seed: int) -> dict[str, float]:
    figures = _check(model, encoder, out_dir, np.random.default_rng(seed))
    failed = [k for k, v in figures.items() if k != "logits_max_abs" and not v <= MAX_DIFF]
    if failed:
        raise ExportCheckFailed(figures, failed)
    return figures


def check_whisper(out_dir: Path, size: str = "tiny", seed: int = 0) -> dict[str, float]:
    """Check the ONNX pair in `out_dir` against the torch model of `size` and `seed`.

    Returns:
        The check figures (see the module docstring) and `logits_max_abs`.

    Raises:
        ValueError: `size` is not one of `SIZES`.
        ImportError: torch or transformers is not importable.
        ExportCheckFailed: a figure is over `MAX_DIFF`.
    """
    model = _model(size, seed)
    return _check_figures(model, _wrappers(model)[0], out_dir, seed)


def export_whisper(
    out_dir: Path, size: str = "tiny", seed: int = 0, check: bool = True
) -> dict[str, float]:
    """Export the bundle of `size` with weights from `seed` into `out_dir` and check it.

    Each file is written under a temporary name and renamed; `generation.json` comes last, so a
    directory that has it is complete. Callers that need the whole directory to appear at once
    export into a temporary directory and rename it.

    Returns:
        The check figures (see the module docstring; none when `check` is false),
        `logits_max_abs`, the seconds `export_s` and `check_s`, and the file sizes `encoder_mib`
        and `decoder_mib`.

    Raises:
        ValueError: `size` is not one of `SIZES`.
        ImportError: torch or transformers is not importable (the message says what to install).
        ExportCheckFailed: a check is over `MAX_DIFF`; the ONNX files stay for inspection, and
            no `generation.json` is written.
    """
    began = time.perf_counter()
    model = _model(size, seed)
    import torch

    encoder, step = _wrappers(model)
    cfg = model.config
    layers, heads = cfg.decoder_layers, cfg.decoder_attention_heads
    head_dim = cfg.d_model // heads
    out_dir.mkdir(parents=True, exist_ok=True)
    cross_names = encoder_outputs(layers)
    _export(
        encoder,
        (torch.zeros(2, cfg.num_mel_bins, 2 * ENCODER_FRAMES),),
        out_dir / "encoder.onnx",
        (ENCODER_INPUTS, cross_names),
        {"input_features": {0: "B"}, **{name: {0: "B"} for name in cross_names}},
    )
    example = (  # B 2, T 3, S 5: no size of 1 that the tracer could take for a constant
        torch.tensor([list(DECODER_START[1:])] * 2),
        torch.tensor([1, 3]),
        *(torch.zeros(2, heads, 5, head_dim) for _ in range(2 * layers)),
        *(torch.zeros(2, heads, ENCODER_FRAMES, head_dim) for _ in range(2 * layers)),
    )
    axes: dict[str, dict[int, str]] = {
        "tokens": {0: "B", 1: "T"},
        "positions": {0: "B"},
        "logits": {0: "B", 1: "T"},
    }
    axes.update({name: {0: "B", 2: "S"} for name in cache_names(layers, "self")})
    axes.update({name: {0: "B"} for name in cache_names(layers, "cross")})
    axes.update({name: {0: "B", 2: "T"} for name in cache_names(layers, "new")})
    _export(
        step,
        example,
        out_dir / "decoder.onnx",
        (decoder_inputs(layers), decoder_outputs(layers)),
        axes,
    )
    exported = time.perf_counter()
    figures = _check_figures(model, encoder, out_dir, seed) if check else {}
    figures["export_s"] = exported - began
    figures["check_s"] = time.perf_counter() - exported
    for name in ("encoder", "decoder"):
        figures[f"{name}_mib"] = (out_dir / f"{name}.onnx").stat().st_size / 2**20
    _write_json(out_dir / "generation.json", generation_spec(size, seed))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=list(SIZES), default="tiny")
    parser.add_argument("--out", type=Path, required=True, help="the bundle directory to write")
    parser.add_argument("--seed", type=int, default=0, help="torch.manual_seed for the weights")
    parser.add_argument("--no-check", action="store_true", help="skip the checks against torch")
    args = parser.parse_args(argv)
    try:
        figures = export_whisper(args.out, args.size, args.seed, check=not args.no_check)
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ExportCheckFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(json.dumps(exc.figures, indent=2), file=sys.stderr)
        return 1
    print(f"built    {args.out} (whisper-{args.size}, seed {args.seed})")
    for key, value in figures.items():
        print(f"  {key:16} {value:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
