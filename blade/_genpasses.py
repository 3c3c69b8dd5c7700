"""The passes of a generation bundle, per stage and device (which candidates an optimize run
tries; ``GenerationSession`` judges and times each).

- encoder: blade's single-model flow (the optimizer's CPU or GPU passes over a ``Session``,
  handed in by ``_optimize`` as an ``EncoderFlow``): ORT graph, transformer fusion (a pre-LN
  transformer: the "bert" fusions SkipLayerNorm and BiasGelu match it), int8 with precision
  recovery on the CPU, fp16 with fp32 IO and recovery plus CUDA graphs per batch bucket on the
  GPU; gated on its output tensors, and a lossy choice also by the generation gates (with the
  plain decoder), else the plain encoder is kept.
- decoder, CPU: transformer fusion; dynamic int8 of the MatMuls (the logits projection
  included), with blade's precision recovery (the nodes that add the most error kept fp32, 1 to
  16 of them) when int8 is faster to begin with.
- decoder, CUDA: transformer fusion; the caches on the device with IO binding; fp16 with fp32 IO
  (recovery keeps LayerNorm, then Softmax, in fp32); the best of those with CUDA graphs per
  ``(rows, cache length)`` bucket.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eas_server.generation._cache import buckets as cache_buckets
from eas_server.generation._spec import cache_names

from . import _passes
from ._devcache import DeviceEncoder
from ._geneval import median_seconds
from ._gensession import MIN_GAIN, Choice, GenerationSession, geomean
from ._model import inspect_model
from ._passes import Candidate
from ._runtime import RuntimeConfig
from ._seq2seq import row_buckets
from ._session import Session

__all__ = ["EncoderFlow", "cpu_decoder", "cuda_decoder", "encoder_stage"]

_ENCODER_ROWS_CPU = 4  # evaluation clips the encoder's own gates and timings run on (CPU)
_INT8_RECOVERY = (1, 2, 4, 8, 16)
_FP16_RECOVERY = (("SkipLayerNormalization", "LayerNormalization"), ("Softmax",))
_LOSSY = ("fp16", "int8")


@dataclass(frozen=True)
class EncoderFlow:
    """blade's single-model flow, from ``_optimize``: the device's passes over a ``Session``
    (``_cpu_passes`` or ``_gpu_passes``)."""

    passes: Callable[[Session, str], None]


def encoder_stage(s: GenerationSession, features: np.ndarray, flow: EncoderFlow) -> Choice:
    """The encoder to serve: the single-model flow's choice, held to the generation gates
    when lossy; records the stage's passes on ``s``."""
    spec = s.spec
    info = dataclasses.replace(
        inspect_model(s.source.encoder),
        bert_like=True,  # a pre-LN transformer: the "bert" fusions match it
        num_heads=spec.heads,
        hidden_size=spec.heads * spec.head_dim,
    )
    cuda = s.device == "cuda"
    rows = features if cuda else features[:_ENCODER_ROWS_CPU]
    batches = [b for b in (1, 8) if b <= rows.shape[0]] if cuda else [1]
    buckets = [[b, 0] for b in row_buckets(max(batches))]
    tolerance = s.tolerance
    if isinstance(tolerance, Mapping):  # blade's tensor gates take only their own keys
        tolerance = {k: v for k, v in tolerance.items() if k in ("rel_l2", "cosine", "top1")}

    def progress(name: str, status: str) -> None:
        s.say(f"encoder: {name}", status)

    (s.workdir / "encoder").mkdir(exist_ok=True)
    session = Session(
        info,
        s.hw,
        {"input_features": np.ascontiguousarray(rows)},
        batches,
        tolerance,
        buckets,
        s.workdir / "encoder",
        progress,
    )
    flow.passes(session, s.level)
    s.encoder_record = {
        "batch_sizes": batches,
        "baseline": {
            "runtime": session.plain_config.json(),
            "latency_ms": {str(b): t * 1e3 for b, t in session.plain_latency.items()},
        },
    }
    entries: dict[str, dict[str, Any]] = {}
    for entry in session.passes:
        entry = dict(entry)
        entries[entry["name"]] = entry
        entry["name"] = f"encoder: {entry['name']}"
        entry["stage"] = "encoder"
        for key in ("latency_ms", "speedup"):
            if key in entry:
                entry[f"encoder_{key}"] = entry.pop(key)
        s.passes.append(entry)
    baseline = session.plain_latency
    timings = {c.name: t for c, t in session.passing}
    where = "as the single-model flow times it"
    if cuda:  # served with the caches on the device: timed that way
        baseline, timings = _served(s, session, rows, entries)
        where = "with its output left on the device"
    candidate, gain = _fastest(session, baseline, timings)
    why = (
        f"{candidate.name}: fastest candidate that passed its gate, {where}"
        if candidate
        else f"plain ORT kept: no candidate beat plain by {MIN_GAIN - 1:.0%}, {where}"
    )
    if candidate is not None and candidate.tier in _LOSSY:
        choice = Choice(candidate.name, candidate.tier, candidate.model_path, candidate.runtime)
        name = f"encoder: {candidate.name}, generation gates"
        if s.attempt(name, candidate.tier, lambda: choice, encoder=choice) is None:
            refused = candidate.name
            candidate, gain = _fastest(session, baseline, timings, lossless=True)
            kept = candidate.name if candidate else "plain ORT"
            why = f"{refused} failed the generation gates: {kept} kept"
    if candidate is None:
        s.encoder_record.update(chosen="plain", reason=why, speedup=1.0)
        return s.encoder
    s.encoder_record.update(chosen=candidate.name, reason=why, speedup=gain)
    return Choice(candidate.name, candidate.tier, candidate.model_path, candidate.runtime)


def served_latency(
    path: Path, config: RuntimeConfig, where: str, features: np.ndarray, batches: Sequence[int]
) -> dict[int, float]:
    """Median seconds of the encoder at each batch size as the device cache serves it
    (``DeviceEncoder``: features in, the cross caches left on the device)."""
    encoder = DeviceEncoder(str(path), config, where)
    return {b: median_seconds(functools.partial(encoder.encode, features[:b])) for b in batches}


def _served(
    s: GenerationSession,
    session: Session,
    rows: np.ndarray,
    entries: Mapping[str, dict[str, Any]],
) -> tuple[dict[int, float], dict[str, dict[int, float]]]:
    """On the GPU, plain and the encoder candidates that passed their gates timed again as
    served: the single-model flow fetches every output to the host, which for an encoder whose
    outputs are the cross caches measures the copy more than the encoder."""
    batches = session.batch_sizes
    plain = served_latency(s.source.encoder, session.plain_config, "cuda", rows, batches)
    s.encoder_record["baseline"]["served_latency_ms"] = {str(b): t * 1e3 for b, t in plain.items()}
    timings: dict[str, dict[int, float]] = {}
    for candidate, _ in session.passing:
        latency = served_latency(candidate.model_path, candidate.runtime, "cuda", rows, batches)
        entries[candidate.name]["served_latency_ms"] = {
            str(b): {"before": plain[b] * 1e3, "after": t * 1e3} for b, t in latency.items()
        }
        timings[candidate.name] = latency
    return plain, timings


def _fastest(
    session: Session,
    baseline: Mapping[int, float],
    timings: Mapping[str, Mapping[int, float]],
    lossless: bool = False,
) -> tuple[Candidate | None, float]:
    """The passing encoder candidate (only lossless ones with ``lossless``) fastest by the
    geometric mean of its speedups over ``baseline``, if by ``MIN_GAIN`` at least."""
    best, best_gain = None, MIN_GAIN
    for candidate, _ in session.passing:
        gain = geomean(baseline, timings[candidate.name])
        if (not lossless or candidate.tier == "lossless") and gain >= best_gain:
            best, best_gain = candidate, gain
    return best, best_gain if best else 1.0


def _fusion(s: GenerationSession, device: str) -> Choice | None:
    spec = s.spec
    info = dataclasses.replace(
        inspect_model(s.source.decoder),
        bert_like=True,
        num_heads=spec.heads,
        hidden_size=spec.heads * spec.head_dim,
    )

    def build() -> Choice:
        out = s.workdir / "decoder-fused.onnx"
        cand = _passes.build_fusion(info, s.source.decoder, out, RuntimeConfig(), device)
        return Choice(cand.name, "lossless", out, s.plain.config, notes=cand.notes)

    return s.attempt("decoder: transformer-fusion", "lossless", build)


def cpu_decoder(s: GenerationSession) -> None:
    """The CPU decoder passes (module docstring)."""
    fused = _fusion(s, "cpu")
    source = fused.model if fused else s.source.decoder
    if s.level != "o2":
        s.skip("decoder: int8-dynamic", f"level {s.level}: lossy passes need level o2")
        return

    def int8(keep: Sequence[str] = (), out: str = "decoder-int8.onnx") -> Choice:
        cand = _passes.build_int8(source, s.workdir / out, RuntimeConfig(), keep)
        return Choice(cand.name, "int8", cand.model_path, s.plain.config, notes=cand.notes)

    name = "decoder: int8-dynamic"
    if s.attempt(name, "int8", int8, time_rejected=True) or not s.last_latency:
        return
    batch = s.batch_sizes[len(s.batch_sizes) // 2]
    best = min([s.plain_latency[batch], *(t[batch] for _, t in s.passing)])
    if s.last_latency[batch] >= best / MIN_GAIN:
        s.skip(
            "decoder: int8 precision recovery",
            f"int8 ran {s.last_latency[batch] * 1e3:.1f} ms a step at batch {batch} "
            f"against {best * 1e3:.1f} ms for the best fp32 decoder: no speed to recover",
        )
        return
    ranked = [n for n, _ in _passes.int8_sensitivity(
        source, s.workdir / "decoder-int8.onnx", _probe(s), s.workdir)]  # fmt: skip
    for k in _INT8_RECOVERY:
        if k > len(ranked):
            break
        build = functools.partial(int8, ranked[:k], f"decoder-int8-keep{k}.onnx")
        if s.attempt(f"decoder: int8-dynamic, {k} kept fp32", "int8", build):
            return


def _probe(s: GenerationSession) -> dict[str, np.ndarray]:
    """Decoder inputs for the int8 sensitivity ranking: four clips' answers as one chunk."""
    spec, ref = s.spec, s.reference
    rows = len(s.probe_cross[0])
    feed = {
        "tokens": np.ascontiguousarray(ref.targets[:rows, : len(spec.decoder_start) + 8]),
        "positions": np.zeros(rows, np.int64),
    }
    empty = np.zeros((rows, spec.heads, 0, spec.head_dim), np.float32)
    feed.update(dict.fromkeys(cache_names(spec.layers, "self"), empty))
    feed.update(zip(cache_names(spec.layers, "cross"), s.probe_cross, strict=True))
    return feed


def cuda_decoder(s: GenerationSession) -> None:
    """The CUDA decoder passes (module docstring)."""
    fused = _fusion(s, "cuda")
    source = fused.model if fused else s.source.decoder
    device = s.attempt(
        "decoder: device-cache",
        "lossless",
        lambda: Choice("device-cache", "lossless", source, s.plain.config, True),
    )
    info = inspect_model(s.source.decoder)

    def fp16(block: Sequence[str] = (), out: str = "decoder-fp16.onnx") -> Choice:
        blocked = [*_default_block(), *block] if block else []
        cand = _passes.build_fp16(info, source, s.workdir / out, RuntimeConfig(), blocked)
        return Choice(cand.name, "fp16", cand.model_path, s.plain.config, True, cand.notes)

    half = s.attempt("decoder: fp16", "fp16", fp16)
    if half is None and (s.workdir / "decoder-fp16.onnx").exists():
        blocked: list[str] = []
        for extra in _FP16_RECOVERY:
            blocked += list(extra)
            build = functools.partial(fp16, list(blocked), f"decoder-fp16-{len(blocked)}.onnx")
            half = s.attempt(f"decoder: fp16, {'+'.join(blocked)} kept fp32", "fp16", build)
            if half is not None:
                break
    best = half or device
    if best is None:
        s.skip("decoder: cuda-graph", "no candidate with the caches on the device passed")
        return
    lengths = cache_buckets(s.spec.max_target_positions)
    buckets = [[r, n] for r in row_buckets(max(s.batch_sizes)) for n in lengths]
    config = RuntimeConfig(**{**best.config.json(), "cuda_graph": True, "buckets": buckets})
    graphed = Choice(f"{best.name}+cuda-graph", best.tier, best.model, config, True,
                      {**best.notes, "graph buckets": len(buckets)})  # fmt: skip
    s.attempt(f"decoder: {graphed.name}", best.tier, lambda: graphed)


def _default_block() -> list[str]:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    return list(DEFAULT_OP_BLOCK_LIST)
