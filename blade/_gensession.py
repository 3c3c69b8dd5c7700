"""One optimize run of a generation bundle: the evaluation set and its fp32 CPU reference, plain
ONNX Runtime on the device (its figures and decoder-step timings: the baseline), and each
candidate judged by the generation gates (``_genverify``) through the runtime that would serve it
(``BladeSeq2Seq``), timed when it passes, and recorded for the report. ``_genpasses`` decides
which candidates to try; this module only evaluates them and chooses (blade's ``Session`` is the
same for single models)."""

from __future__ import annotations

import dataclasses
import gc
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._genartifact import GenerationSource
from ._geneval import Reference, front_end, greedy, teacher_force, time_steps
from ._genverify import (
    TARGET_LENGTHS,
    Agreement,
    GenerationGate,
    TeacherForced,
    agreement,
    check_generation,
    generation_gate,
    teacher_forced,
)
from ._hardware import Hardware
from ._runtime import RuntimeConfig
from ._seq2seq import BladeSeq2Seq, Seq2SeqConfig
from ._session import ProgressFn

__all__ = ["MIN_GAIN", "STEP_CACHE", "Choice", "GenerationSession", "geomean", "logits_metrics"]

MIN_GAIN = 1.05  # as blade's: a candidate must beat plain by 5%
STEP_CACHE = 64
"""The cache length (entries already written) a decoder step is timed at."""


@dataclass
class Choice:
    """A model file of one stage and how to run it."""

    name: str
    tier: str
    model: Path
    config: RuntimeConfig
    device_cache: bool = False
    notes: dict[str, Any] = field(default_factory=dict)


def _worst(tiers: Sequence[str]) -> str:
    order = ("lossless", "fp16", "int8")
    return max(tiers, key=order.index)


def geomean(plain: Mapping[int, float], latency: Mapping[int, float]) -> float:
    return math.exp(statistics.fmean(math.log(plain[b] / t) for b, t in latency.items()))


class GenerationSession:
    """State of one optimize call of a generation bundle (see the module docstring)."""

    def __init__(
        self,
        source: GenerationSource,
        clips: list[np.ndarray],
        synthetic: bool,
        hw: Hardware,
        level: str,
        tolerance: float | Mapping[str, float] | None,
        batch_sizes: Sequence[int],
        workdir: Path,
        progress: ProgressFn | None,
    ):
        self.source, self.spec = source, source.spec
        self.clips, self.synthetic = clips, synthetic
        self.hw, self.device, self.level = hw, hw.device, level
        self.tolerance = tolerance
        self.batch_sizes = sorted(set(batch_sizes))
        self.workdir = workdir
        self.progress = progress
        self.passes: list[dict[str, Any]] = []
        self.passing: list[tuple[Choice, dict[int, float]]] = []
        self.predictions = max(TARGET_LENGTHS)
        self.last_latency: dict[int, float] = {}
        self._encoded: dict[int, Any] = {}  # host encoder output of the clips, per encoder

    # ------------------------------------------------------------------- figures

    def say(self, name: str, status: str) -> None:
        if self.progress:
            self.progress(name, status)

    def figures(
        self, runtime: BladeSeq2Seq, encoder: Choice | None = None
    ) -> tuple[list[TeacherForced], Agreement]:
        """Teacher-forced logits and greedy agreement of ``runtime`` on the evaluation set.
        With host caches the clips' encoder output is computed once per encoder, not per
        decoder candidate (on the CPU it would cost more than the decoding)."""
        ref = self.reference
        encoded = None
        if not runtime.config.device_cache:
            key = id(encoder or self.encoder)
            if key not in self._encoded:
                self._encoded[key] = runtime.encode(ref.features)
            encoded = self._encoded[key]
        logits = teacher_force(
            runtime, self.spec, ref.features, ref.targets, self.predictions, encoded
        )
        answers = greedy(runtime, self.spec, ref.features, self.predictions, encoded)
        tokens = generation_gate("lossless", self.tolerance).agree_tokens
        return (
            teacher_forced(ref.logits, logits, ref.lengths),
            agreement(ref.answers, answers, tokens),
        )

    def gate(self, tier: str) -> GenerationGate:
        """The tier's generation gate; lossless is held to 4x plain's own distance on the
        device when that is larger (fp32 on a GPU uses TF32 and other kernels than the CPU)."""
        gate = generation_gate(tier, self.tolerance)
        if tier != "lossless":
            return gate
        tf, agree = self.plain_figures
        worst = tf[-1]
        relaxed = dataclasses.replace(
            gate,
            logits_cosine_min=min(gate.logits_cosine_min, 1 - 4 * (1 - worst.cosine_min)),
            logits_max_abs_max=max(gate.logits_max_abs_max, 4 * worst.rel_max_abs),
            agree_share_min=min(gate.agree_share_min, agree.share),
            mean_prefix_min=min(gate.mean_prefix_min, agree.mean_prefix),
        )
        if isinstance(self.tolerance, Mapping):  # what the user set is held as set
            return generation_gate("lossless", self.tolerance, base=relaxed)
        return relaxed

    def runtime(self, decoder: Choice, encoder: Choice | None = None) -> BladeSeq2Seq:
        enc = encoder or self.encoder
        config = Seq2SeqConfig(enc.config, decoder.config, decoder.device_cache)
        return BladeSeq2Seq(enc.model, decoder.model, config)

    def time(self, runtime: BladeSeq2Seq) -> dict[int, float]:
        features = self.reference.features
        return time_steps(runtime, self.spec, features, self.batch_sizes, STEP_CACHE)

    # ------------------------------------------------------------------ attempts

    def attempt(
        self,
        name: str,
        tier: str,
        build: Callable[[], Choice],
        *,
        time_rejected: bool = False,
        encoder: Choice | None = None,
    ) -> Choice | None:
        """Build a decoder (or, with ``encoder``, an encoder) candidate, judge it by the
        generation gates, time it when it passes; record it either way."""
        self.say(name, "running")
        self.last_latency = {}
        try:
            choice = build()
            runtime = self.runtime(self.plain if encoder else choice, encoder)
            tf, agree = self.figures(runtime, encoder)
        except Exception as exc:  # a pass that cannot apply must not stop the others
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
            stage = "encoder" if encoder else "decoder"
            self.passes.append({"name": name, "stage": stage, "verdict": "failed",
                                "reason": reason})  # fmt: skip
            self.say(name, "failed")
            return None
        gate = self.gate(tier)
        passed, reason = check_generation(tf, agree, gate)
        entry: dict[str, Any] = {
            "name": name,
            "stage": "encoder" if encoder else "decoder",
            "tier": tier,
            "gate": gate.json(),
            "metrics": {"logits": logits_metrics(tf)},
            "generation": {"teacher_forced": [t.json() for t in tf], "agreement": agree.json()},
            "notes": {**choice.notes, "runtime": _runtime_note(choice)},
            "verdict": "passed" if passed else "rejected",
            "reason": reason,
        }
        if not encoder and (passed or time_rejected):
            latency = self.time(runtime)
            entry["latency_ms"] = {
                str(b): {"before": self.plain_latency[b] * 1e3, "after": t * 1e3}
                for b, t in latency.items()
            }
            entry["speedup"] = {str(b): self.plain_latency[b] / t for b, t in latency.items()}
            self.last_latency = latency
            if passed:
                self.passing.append((choice, latency))
        del runtime
        gc.collect()  # a candidate's sessions and device buffers go before the next one's
        self.passes.append(entry)
        self.say(name, entry["verdict"])
        return choice if passed else None

    def skip(self, name: str, reason: str, stage: str = "decoder") -> None:
        self.passes.append({"name": name, "stage": stage, "verdict": "skipped", "reason": reason})
        self.say(name, "skipped")

    def prepare(self) -> np.ndarray:
        """The reference on the evaluation set, and plain on the device: its figures and
        timings. Returns the clips' features."""
        spec, src = self.spec, self.source
        features = front_end(spec).batch(self.clips)
        reference_cfg = RuntimeConfig(provider="cpu", graph_level="disabled")
        reference = BladeSeq2Seq(
            src.encoder, src.decoder, Seq2SeqConfig(reference_cfg, reference_cfg)
        )
        self.say("reference (fp32 CPU)", "running")
        self.reference = Reference.build(reference, spec, features, self.predictions)
        self.probe_cross = reference.encode(features[:4])
        del reference
        self.say("reference (fp32 CPU)", "done")
        device_cfg = RuntimeConfig(provider=self.device)
        self.plain = Choice("plain", "lossless", src.decoder, device_cfg)
        self.encoder = Choice("plain", "lossless", src.encoder, device_cfg)
        plain = self.runtime(self.plain)
        self.plain_figures = self.figures(plain)
        self.plain_latency = self.time(plain)
        del plain
        self.encoder_record: dict[str, Any] = {}
        return features

    def choose(self) -> None:
        """The fastest passing decoder by geometric-mean speedup over plain (5% at least)."""
        best, gain, latency = None, 1.0, self.plain_latency
        for choice, timed in self.passing:
            g = geomean(self.plain_latency, timed)
            if g > gain:
                best, gain, latency = choice, g, timed
        if best is None or gain < MIN_GAIN:
            reason = (
                "no decoder candidate passed the generation gates"
                if not self.passing
                else f"no decoder candidate beat plain by {MIN_GAIN - 1:.0%}"
            )
            self.decoder, self.why = self.plain, f"plain decoder kept: {reason}"
            gain, latency = 1.0, self.plain_latency
        else:
            self.decoder, self.why = best, f"{best.name}: fastest decoder that passed its gates"
        batch = self.batch_sizes[len(self.batch_sizes) // 2]
        self.gain = gain
        self.speedup = self.plain_latency[batch] / latency[batch]
        self.tier = _worst([self.encoder.tier, self.decoder.tier])

    def config(self) -> Seq2SeqConfig:
        return Seq2SeqConfig(self.encoder.config, self.decoder.config, self.decoder.device_cache)


def logits_metrics(tf: Sequence[TeacherForced]) -> dict[str, float | int]:
    """The report table's one line: the longest length's figures."""
    last = tf[-1]
    return {"cosine": last.cosine_min, "rel_l2": last.rel_l2, "max_abs": last.max_abs,
            "rel_max_abs": last.rel_max_abs, "nan_inf": last.nan_inf}  # fmt: skip


def _runtime_note(choice: Choice) -> str:
    parts = [choice.config.provider]
    parts.append("device caches, IO binding" if choice.device_cache else "host caches")
    if choice.config.cuda_graph:
        parts.append(f"CUDA graphs ({len(choice.config.buckets)} buckets)")
    return ", ".join(parts)
