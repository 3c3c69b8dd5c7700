"""``optimize`` for a generation bundle (``generation.json``, an encoder and a decoder step):
passes per stage, each gated, verified by generation's own measures, and a derived bundle.

1. Reference: the source bundle on the CPU with graph optimizations off, over the evaluation
   clips: each clip's greedy answer and the teacher-forced logits on it (``_geneval``).
2. Encoder (``_genpasses``): blade's single-model flow, handed in by ``_optimize`` (which
   imports this module) as an ``EncoderFlow``, gated on its output tensors; a lossy choice also
   by the generation gates.
3. Decoder (``_genpasses``): candidates run as served (``BladeSeq2Seq``: the chosen encoder,
   the caches, the scheduler) and judged by the generation gates (``_genverify``):
   teacher-forced logits (cosine, max abs) and greedy-token agreement against the reference.
   Those that pass are timed per decoder step (``batch_sizes`` rows at a cache of 64); the
   fastest by geometric mean wins if it beats plain by 5% (``GenerationSession``).
4. The derived bundle (``_genartifact``), its report (``_genreport``), and the artifact cache.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._artifact import ARTIFACT_FORMAT, from_cache
from ._errors import RuntimeNotAvailable
from ._genartifact import (
    KIND,
    REFERENCE_CLIPS,
    REFERENCE_PREDICTIONS,
    open_generation,
    staging_dir,
    store,
    write_files,
)
from ._geneval import load_clips, synthetic_clips
from ._genpasses import EncoderFlow, cpu_decoder, cuda_decoder, encoder_stage
from ._genreport import render_generation_report
from ._gensession import STEP_CACHE, GenerationSession, logits_metrics
from ._genverify import TARGET_LENGTHS, generation_gate
from ._hardware import Hardware, detect_hardware
from ._seq2seq import Seq2SeqConfig
from ._session import ProgressFn

__all__ = ["EncoderFlow", "optimize_generation"]


def _reference_arrays(s: GenerationSession) -> dict[str, np.ndarray]:
    """What the derived bundle re-verifies at load: two clips, eight predictions."""
    ref, n, k = s.reference, REFERENCE_CLIPS, REFERENCE_PREDICTIONS
    prompt = len(s.spec.decoder_start)
    return {
        "features": ref.features[:n],
        "targets": ref.targets[:n, : prompt + k],
        "logits": ref.logits[:n, :k],
        "lengths": np.minimum(np.asarray(ref.lengths[:n]), k),
    }


def _report(s: GenerationSession, key: str, elapsed: float, sha256: str) -> dict[str, Any]:
    """The report of a finished run, as written to ``report.json``."""
    tf, agree = s.plain_figures
    hw = s.hw
    clips = len(s.clips)
    test_data = (
        f"synthetic: {clips} clips (tones, a chirp, noise bursts, silence; 1 to 12 s); "
        "pass real audio clips as test_data for a stronger check"
        if s.synthetic
        else f"user: {clips} clips"
    )
    graphs = s.decoder.config.buckets if s.decoder.config.cuda_graph else []
    return {
        "kind": KIND,
        "model": str(s.source.root),
        "model_sha256": sha256,
        "bundle": str(s.source.root),
        "task": None,
        "device": hw.device,
        "hardware": hw.json(),
        "hardware_key": hw.key(),
        "tensorrt": hw.tensorrt or "not installed",
        "test_data": test_data,
        "evaluation": {
            "clips": clips,
            "synthetic": s.synthetic,
            "target_lengths": list(TARGET_LENGTHS),
            "max_new_tokens": s.predictions,
            "agree_tokens": generation_gate("lossless", s.tolerance).agree_tokens,
            "reference": "the source bundle on ONNX Runtime's CPU EP, graph optimizations "
            "off, greedy; teacher forcing feeds its answers back",
        },
        "gates": {tier: s.gate(tier).json() for tier in ("lossless", "fp16", "int8")},
        "batch_sizes": s.batch_sizes,
        "cache_length": STEP_CACHE,
        "buckets": graphs,
        "baseline": {
            "name": "plain",
            "runtime": Seq2SeqConfig(s.plain.config, s.plain.config).json(),
            "latency_ms": {str(b): t * 1e3 for b, t in s.plain_latency.items()},
            "metrics": {"logits": logits_metrics(tf)},
            "generation": {
                "teacher_forced": [t.json() for t in tf],
                "agreement": agree.json(),
            },
        },
        "encoder": s.encoder_record,
        "passes": s.passes,
        "decoder": {"chosen": s.decoder.name, "reason": s.why},
        "chosen": f"encoder {s.encoder_record['chosen']}, decoder {s.decoder.name}",
        "tier": s.tier,
        "runtime": s.config().json(),
        "reason": s.why,
        "speedup": s.speedup,
        "speedup_geomean": s.gain,
        "elapsed_s": elapsed,
        "cache": {"hit": False, "key": key},
    }


def _cache_key(
    sha256: str,
    hw: Hardware,
    level: str,
    tolerance: float | Mapping[str, float] | None,
    batch_sizes: Sequence[int],
    clips: Sequence[np.ndarray] | None,
) -> str:
    h = hashlib.sha256()
    settings = {
        "kind": KIND,
        "format": ARTIFACT_FORMAT,
        "hardware": hw.key(),
        "level": level,
        "tolerance": dict(tolerance) if isinstance(tolerance, Mapping) else tolerance,
        "batch_sizes": sorted(set(batch_sizes)),
        "step_cache": STEP_CACHE,
        "clips": "synthetic" if clips is None else len(clips),
    }
    h.update(sha256.encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    for clip in clips or ():
        h.update(np.ascontiguousarray(clip).tobytes())
    return f"{sha256[:16]}-{hw.key()}-gen-{h.hexdigest()[:16]}"


def optimize_generation(
    model: str | Path,
    *,
    device: str,
    test_data: str | Path | Mapping[str, np.ndarray] | None,
    output_dir: str | Path | None,
    level: str,
    tolerance: float | Mapping[str, float] | None,
    batch_sizes: Sequence[int],
    progress: ProgressFn | None,
    cache_dir: str | Path | None,
    flow: EncoderFlow,
) -> tuple[Path, dict[str, Any], float]:
    """Optimize a generation bundle into a derived one (``blade.optimize``'s arguments).

    Returns:
        The derived bundle's directory, the report, the decoder step's speedup at the median
        batch size.

    Raises:
        InvalidModel: not a valid generation bundle, or one blade derived already.
        InvalidTestData: clips that are not 1-D float32 audio the server would take.
        RuntimeNotAvailable: ``device="cuda"`` without the CUDA execution provider.
        ValueError: an output directory inside the bundle; a tolerance key that does not apply.
    """
    source = open_generation(model)
    spec = source.spec
    clips = load_clips(test_data, spec) if test_data is not None else None
    generation_gate("int8", tolerance)  # a bad tolerance key fails before any work
    out_dir = Path(output_dir) if output_dir else source.default_output()
    if out_dir.resolve().is_relative_to(source.root.resolve()):
        raise ValueError(
            f"output_dir {out_dir} would replace the bundle {source.root} or write inside it: "
            "give a directory outside the bundle (default: BUNDLE.blade beside it)"
        )
    if device == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeNotAvailable(
                "device='cuda' needs onnxruntime-gpu: pip install 'autoai[gpu]'"
            )
    hw = detect_hardware(device)
    sha256 = source.sha256()
    key = _cache_key(sha256, hw, level, tolerance, batch_sizes, clips)
    cached = from_cache(key, out_dir, cache_dir)
    if cached is not None:
        if progress:
            progress("cache", "hit")
        return out_dir, cached, float(cached["speedup"])
    with tempfile.TemporaryDirectory(prefix="blade-generation-") as tmp:
        run = GenerationSession(
            source,
            clips if clips is not None else synthetic_clips(spec),
            clips is None,
            hw,
            level,
            tolerance,
            batch_sizes,
            Path(tmp),
            progress,
        )
        started = time.time()
        features = run.prepare()
        run.encoder = encoder_stage(run, features, flow)
        (cuda_decoder if device == "cuda" else cpu_decoder)(run)
        run.choose()
        report = _report(run, key, time.time() - started, sha256)
        staging = staging_dir(out_dir)
        try:
            doc = {
                "kind": KIND,
                "candidate": report["chosen"],
                "encoder": {"candidate": run.encoder.name, "tier": run.encoder.tier},
                "decoder": {"candidate": run.decoder.name, "tier": run.decoder.tier},
                "tier": run.tier,
                "gate": run.gate(run.tier).json(),
                "runtime": run.config().json(),
                "source_sha256": sha256,
                "hardware_key": hw.key(),
            }
            write_files(
                staging,
                source,
                run.encoder.model,
                run.decoder.model,
                doc,
                _reference_arrays(run),
                report,
                render_generation_report(report),
            )
            store(staging, out_dir, key, cache_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return out_dir, report, run.speedup
