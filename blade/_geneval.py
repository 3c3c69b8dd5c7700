"""Running generation candidates on the evaluation set: the clips, the fp32 CPU reference's
answers and teacher-forced logits, a candidate's own (through the same ``Cache`` calls and the
same scheduler that serve it), and decoder-step timings.

The evaluation set is audio: the user's clips (``test_data``: an npz or a mapping of 1-D float32
arrays at the bundle's sample rate), or synthetic ones (tones, chirps, noise bursts and silence of
1 to 12 s, seeded), which the report names as such.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eas_server.generation._cache import Cache, buckets
from eas_server.generation._mel import InvalidAudio, LogMel, check_audio
from eas_server.generation._scheduler import Request, Runtime, Scheduler
from eas_server.generation._spec import GenerateParams, GenerationSpec

from ._errors import InvalidTestData

__all__ = [
    "Reference",
    "front_end",
    "greedy",
    "load_clips",
    "median_seconds",
    "synthetic_clips",
    "teacher_force",
    "time_steps",
]

SYNTHETIC_CLIPS = 8


def synthetic_clips(spec: GenerationSpec, count: int = SYNTHETIC_CLIPS) -> list[np.ndarray]:
    """Seeded clips of 1 to 12 s: tones, a chirp, noise bursts, speech-like modulated noise,
    silence with a click (the encoder sees different spectra, the decoder different cross
    attention)."""
    rate = spec.sample_rate
    rng = np.random.default_rng(20)
    clips: list[np.ndarray] = []
    for i in range(count):
        seconds = 1 + (i * 5) % 12
        t = np.arange(int(seconds * rate)) / rate
        kind = i % 4
        if kind == 0:
            audio = 0.3 * np.sin(2 * np.pi * (220 + 110 * i) * t)
        elif kind == 1:
            audio = 0.3 * np.sin(2 * np.pi * (100 + 900 * t / seconds) * t)
        elif kind == 2:
            envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
            audio = 0.2 * envelope * rng.standard_normal(t.size)
        else:
            audio = 0.01 * rng.standard_normal(t.size)
            audio[t.size // 2 : t.size // 2 + 40] += 0.8
        clips.append(np.clip(audio, -1, 1).astype(np.float32))
    return clips


def load_clips(
    source: str | Path | Mapping[str, np.ndarray], spec: GenerationSpec
) -> list[np.ndarray]:
    """The user's clips, checked as the server checks request audio.

    Raises:
        InvalidTestData: unreadable file, no clips, or a clip that is not 1-D float32 of at most
            ``n_samples`` finite samples (the message names it).
    """
    if isinstance(source, str | Path):
        try:
            with np.load(source, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise InvalidTestData(f"cannot read test data {source}: {exc}") from exc
    else:
        arrays = {k: np.asarray(v) for k, v in source.items()}
    if not arrays:
        raise InvalidTestData(
            "test data for a generation bundle holds no clips; expected 1-D float32 arrays of "
            f"{spec.sample_rate} Hz audio, one per key"
        )
    clips: list[np.ndarray] = []
    for name in sorted(arrays):
        try:
            clips.append(check_audio(arrays[name], spec.n_samples, sample_rate=spec.sample_rate))
        except InvalidAudio as exc:
            raise InvalidTestData(f"test data clip {name!r}: {exc}") from None
    return clips


def front_end(spec: GenerationSpec) -> LogMel:
    return LogMel(
        n_mels=spec.n_mels,
        sample_rate=spec.sample_rate,
        n_fft=spec.n_fft,
        hop_length=spec.hop_length,
        n_samples=spec.n_samples,
    )


class _Indexed:
    """A ``Runtime`` whose requests carry a clip's index as their audio: the features of the
    evaluation set are computed once, not per candidate, and with ``encoded`` (host arrays of
    every clip, from the same encoder) neither is the encoder's output."""

    def __init__(self, runtime: Runtime, features: np.ndarray, encoded: Any = None):
        self._runtime = runtime
        self._features = features
        self._encoded = encoded

    def encode(self, index: np.ndarray) -> Any:
        if self._encoded is not None:
            return [np.ascontiguousarray(a[index]) for a in self._encoded]
        return self._runtime.encode(self._features[index])

    def new_cache(self, capacity: int, sizes: tuple[int, ...]) -> Cache:
        return self._runtime.new_cache(capacity, sizes)


def greedy(
    runtime: Runtime,
    spec: GenerationSpec,
    features: np.ndarray,
    max_new_tokens: int,
    encoded: Any = None,
) -> list[list[int]]:
    """Every clip's greedy answer, all clips decoded together by the scheduler (as served);
    an answer that stopped at end of sequence ends with that token. ``encoded``: the clips'
    encoder output as host arrays, when already computed by the same encoder."""
    count = int(features.shape[0])
    params = GenerateParams(max_new_tokens=max_new_tokens).resolve(spec)
    indexed = _Indexed(runtime, features, encoded)
    scheduler = Scheduler(spec, indexed, np.concatenate, capacity=count, max_admit=count)
    requests = [Request(np.array([i], np.int64), params) for i in range(count)]
    for request in requests:
        scheduler.add(request)
    events = scheduler.admit()
    while scheduler.running:
        events += scheduler.decode()
    failed = [e.error for e in events if e.error]
    if failed:
        raise RuntimeError(f"greedy decoding failed: {failed[0]}")
    ended = {id(e.request) for e in events if e.finish_reason == "eos"}
    return [r.tokens + ([spec.eos_token_id] if id(r) in ended else []) for r in requests]


def teacher_force(
    runtime: Runtime,
    spec: GenerationSpec,
    features: np.ndarray,
    targets: np.ndarray,
    count: int,
    encoded: Any = None,
) -> np.ndarray:
    """Logits ``[clips, count, V]`` of the predictions at positions ``P - 1 .. P + count - 2``,
    each made from ``targets`` (``[clips, P + count]``, the prompt first) fed token by token
    through the runtime's cache: the prefill, then one step per token. ``encoded``: as for
    ``greedy``."""
    clips = int(features.shape[0])
    prompt = len(spec.decoder_start)
    cache = runtime.new_cache(clips, buckets(spec.max_target_positions))
    if encoded is None:
        encoded = runtime.encode(features)
    for row in range(clips):
        cache.put_cross(row, encoded, row)
    cache.fit(0, prompt + 1)
    out = [cache.prefill(0, clips, targets[:, :prompt])]
    for position in range(prompt, prompt + count - 1):
        cache.fit(clips, position + 1)
        positions = np.full(clips, position, np.int64)
        out.append(cache.step(clips, np.ascontiguousarray(targets[:, position]), positions))
    return np.stack(out, axis=1)


def median_seconds(run: Callable[[], object], budget_s: float = 1.0) -> float:
    """Median seconds of ``run``: 2 warm-ups (a CUDA graph's capture), then 3 to 50 runs within
    ``budget_s``."""
    for _ in range(2):
        run()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (len(times) < 50 and time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_steps(
    runtime: Runtime,
    spec: GenerationSpec,
    features: np.ndarray,
    batch_sizes: Sequence[int],
    length: int,
    budget_s: float = 1.0,
) -> dict[int, float]:
    """Median seconds of one decoder step (``Cache.step``, the cache update included) per batch
    size, every row at position ``length - 1`` of a cache of bucket >= ``length``."""
    rows = max(batch_sizes)
    cache = runtime.new_cache(rows, buckets(spec.max_target_positions))
    encoded = runtime.encode(features[:1])
    for row in range(rows):
        cache.put_cross(row, encoded, 0)
    prompt = np.broadcast_to(
        np.asarray(spec.decoder_start, np.int64), (rows, len(spec.decoder_start))
    )
    cache.fit(0, prompt.shape[1] + 1)
    cache.prefill(0, rows, np.ascontiguousarray(prompt))
    cache.fit(rows, length)
    out: dict[int, float] = {}
    for batch in batch_sizes:
        tokens = np.full(batch, spec.decoder_start[-1], np.int64)
        positions = np.full(batch, length - 1, np.int64)
        step = functools.partial(cache.step, batch, tokens, positions)
        out[batch] = median_seconds(step, budget_s)
    return out


@dataclass(frozen=True)
class Reference:
    """The fp32 CPU reference on the evaluation set.

    Attributes:
        features: the clips' log-mel features ``[N, n_mels, n_frames]``.
        answers: each clip's greedy answer (with the end-of-sequence token when it stopped).
        targets: ``[N, P + K]``: the prompt and each answer, padded with end of sequence.
        lengths: the valid predictions per clip (its answer's length).
        logits: ``[N, K, V]`` teacher-forced logits on ``targets``.
    """

    features: np.ndarray
    answers: list[list[int]]
    targets: np.ndarray
    lengths: list[int]
    logits: np.ndarray

    @classmethod
    def build(
        cls, runtime: Runtime, spec: GenerationSpec, features: np.ndarray, predictions: int
    ) -> Reference:
        encoded = runtime.encode(features)
        answers = greedy(runtime, spec, features, predictions, encoded)
        targets = np.full((len(answers), len(spec.decoder_start) + predictions), spec.eos_token_id)
        targets[:, : len(spec.decoder_start)] = spec.decoder_start
        for row, answer in enumerate(answers):
            targets[row, len(spec.decoder_start) : len(spec.decoder_start) + len(answer)] = answer
        targets = targets.astype(np.int64)
        logits = teacher_force(runtime, spec, features, targets, predictions, encoded)
        lengths = [len(a) for a in answers]
        return cls(features, answers, targets, lengths, logits)
