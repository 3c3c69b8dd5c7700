"""``optimize``: try the passes that fit the device, verify each candidate against the fp32 CPU
reference, time the ones that pass, keep the fastest, and write the artifact and its report."""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import _artifact, _passes
from ._bundle import ARTIFACT_DIR, SourceBundle, is_bundle, open_bundle
from ._errors import InvalidTestData, RuntimeNotAvailable
from ._genartifact import is_generation_bundle
from ._generation import EncoderFlow, optimize_generation
from ._hardware import detect_hardware
from ._inputs import load_test_data, synthesize
from ._model import ModelInfo, inspect_model
from ._passes import Candidate
from ._runtime import RuntimeConfig
from ._session import ProgressFn, Session, padding, rows
from ._task import DEFAULT_TASK_TOLERANCE, TaskGate, check_tolerance, numeric_only

__all__ = ["OptimizeResult", "optimize"]

log = logging.getLogger("blade")


_INT8_RECOVERY = (1, 2, 4, 8, 16)  # nodes kept fp32 on successive retries (bounded)
_FP16_RECOVERY = (
    ("SkipLayerNormalization", "LayerNormalization"),
    ("Softmax", "Attention", "MultiHeadAttention"),
)
_MIN_GAIN = 1.05  # a candidate must beat plain by 5% to be chosen
_EVAL_TEST_ROWS = 256  # evaluation-set texts that also feed the numeric gates of a bundle


@dataclass(frozen=True)
class OptimizeResult:
    """What ``optimize`` made.

    Attributes:
        artifact_dir: everything the blade processor needs (model, ``blade.json``, reference
            inputs and outputs, ``report.json``, ``report.txt``).
        report: the report as a dict (see docs/blade.md for the fields).
        speedup: plain latency / chosen latency at the median of ``batch_sizes``.
    """

    artifact_dir: Path
    report: dict[str, Any]
    speedup: float


def _ready(candidate: Candidate) -> Callable[[], Candidate]:
    """A build step for a candidate that needs no building (a runtime variant of another)."""
    return lambda: candidate


def _fastest(s: Session, candidates: Sequence[Candidate | None]) -> Candidate | None:
    """Of the given candidates that passed, the one fastest at the median batch size (or None
    when plain is faster than all of them)."""
    batch = sorted(s.batch_sizes)[len(s.batch_sizes) // 2]
    best, best_t = None, s.plain_latency[batch]
    for cand, latency in s.passing:
        if cand in candidates and latency[batch] < best_t:
            best, best_t = cand, latency[batch]
    return best


def _trim(s: Session, source: Path, runtime: RuntimeConfig) -> RuntimeConfig:
    """Try cutting trailing padding (BERT-like models with a mask); the runtime to build on."""
    if not (s.model.bert_like and s.model.mask_input and runtime.pad_inputs):
        s.skip("trim-padding", "needs a BERT-like model with an attention-mask input")
        return runtime
    trimmed = RuntimeConfig(**{**runtime.json(), "trim_mask": s.model.mask_input})
    notes = {"mask": s.model.mask_input, "outputs padded back": list(runtime.pad_outputs)}
    got = s.attempt(
        "trim-padding", _ready(Candidate("trim-padding", "lossless", source, trimmed, notes))
    )
    return trimmed if got is not None else runtime


def _cpu_passes(s: Session, level: str) -> None:
    base = s.model.path
    runtime = RuntimeConfig(provider="cpu", **padding(s.model))
    graph = s.attempt(
        "ort-graph",
        lambda: _passes.build_ort_graph(base, s.workdir / "ort-graph.onnx", runtime, "cpu"),
    )
    fused = None
    if s.model.bert_like:
        fused = s.attempt(
            "transformer-fusion",
            lambda: _passes.build_fusion(s.model, base, s.workdir / "fused.onnx", runtime, "cpu"),
        )
    else:
        s.skip(
            "transformer-fusion",
            "not a BERT-like model (no token-id input, embedding and layer norm)",
        )
    start = _fastest(s, [fused, graph])
    source = start.model_path if start else base
    runtime = _trim(s, source, runtime)
    if level != "o2":
        s.skip("int8-dynamic", f"level {level}: lossy passes need level o2")
        return
    if not _passes.quantizable_nodes(source):
        s.skip("int8-dynamic", "no MatMul, Gemm or Attention with constant weights to quantize")
        return
    s.last_latency = {}
    first = s.attempt(
        "int8-dynamic",
        lambda: _passes.build_int8(source, s.workdir / "int8.onnx", runtime),
        time_rejected=True,
    )
    if first is not None or not s.last_latency:
        return
    # Recovery only makes int8 slower: when it does not beat the best fp32 candidate to begin
    # with (CPUs without fast int8 dot products), there is nothing to recover.
    batch = sorted(s.batch_sizes)[len(s.batch_sizes) // 2]
    best = _fastest(s, [c for c, _ in s.passing])
    best_t = {id(c): t for c, t in s.passing}.get(id(best), {}).get(batch, s.plain_latency[batch])
    if s.last_latency[batch] >= best_t / _MIN_GAIN:
        reason = (
            f"int8 ran {s.last_latency[batch] * 1e3:.1f} ms at batch {batch} against "
            f"{best_t * 1e3:.1f} ms for the best fp32 candidate: no speed to recover on this CPU"
        )
        s.skip("int8 precision recovery", reason)
        return
    # precision recovery: keep the nodes that add the most error in fp32, a few more each retry
    probe = rows(s.data, min(8, next(iter(s.data.values())).shape[0]))
    ranked = [
        name
        for name, _ in _passes.int8_sensitivity(source, s.workdir / "int8.onnx", probe, s.workdir)
    ]
    for k in _INT8_RECOVERY:
        if k > len(ranked):
            break
        keep = ranked[:k]
        out = s.workdir / f"int8-keep{k}.onnx"
        build = functools.partial(_passes.build_int8, source, out, runtime, keep)
        if s.attempt(f"int8-dynamic, {k} kept fp32", build) is not None:
            return


def _graph_buckets(s: Session, runtime: RuntimeConfig) -> list[list[int]]:
    """CUDA-graph buckets: the configured ones, and with padding trimmed also shorter sequences
    (a short request then replays a short graph)."""
    if not runtime.trim_mask:
        return s.buckets
    longest = max(q for _, q in s.buckets)
    seqs = sorted({q for q in (16, 32, 64, 128, 256, 512) if q < longest} | {longest})
    return [[b, q] for b in sorted({b for b, _ in s.buckets}) for q in seqs]


def _gpu_passes(s: Session, level: str) -> None:
    base = s.model.path
    plain = RuntimeConfig(provider="cuda", **padding(s.model))
    graph = s.attempt(
        "ort-graph",
        lambda: _passes.build_ort_graph(base, s.workdir / "ort-graph.onnx", plain, "cuda"),
    )
    fused = None
    if s.model.bert_like:
        fused = s.attempt(
            "transformer-fusion",
            lambda: _passes.build_fusion(s.model, base, s.workdir / "fused.onnx", plain, "cuda"),
        )
    else:
        s.skip("transformer-fusion", "not a BERT-like model")
    start = _fastest(s, [fused, graph])
    runtime = _trim(s, start.model_path if start else base, plain)
    source = fused.model_path if fused else base  # fp16 gains most on the fused graph
    fp16 = s.attempt(
        "fp16", lambda: _passes.build_fp16(s.model, source, s.workdir / "fp16.onnx", runtime)
    )
    if fp16 is None and (s.workdir / "fp16.onnx").exists():
        blocked: list[str] = []
        for extra in _FP16_RECOVERY:
            blocked += list(extra)
            out = s.workdir / f"fp16-{len(blocked)}.onnx"
            build = functools.partial(
                _passes.build_fp16, s.model, source, out, runtime, _default_block() + blocked
            )
            fp16 = s.attempt(f"fp16, {'+'.join(blocked)} kept fp32", build)
            if fp16 is not None:
                break
    best = fp16 or _fastest(s, [fused, graph])
    if best is not None:
        buckets = _graph_buckets(s, runtime)
        graphed = RuntimeConfig(**{**runtime.json(), "cuda_graph": True, "buckets": buckets})
        name = f"{best.name}+cuda-graph"
        variant = Candidate(
            name, best.tier, best.model_path, graphed, {**best.notes, "buckets": buckets}
        )
        s.attempt(name, _ready(variant))
    if s.hw.tensorrt is None:
        s.skip(
            "tensorrt",
            "tensorrt: not installed (the TensorRT 10 libraries are not importable here)",
        )
    else:
        trt = _trt_config(s)
        notes = {"trt": trt.trt_options}
        s.attempt("tensorrt-fp16", _ready(Candidate("tensorrt-fp16", "fp16", base, trt, notes)))


def _default_block() -> list[str]:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    return list(DEFAULT_OP_BLOCK_LIST)


def _trt_shapes(model: ModelInfo, batch: int, seq: int) -> str:
    """A TensorRT EP profile string: every input, its dynamic dims set to ``batch`` / ``seq``."""
    parts = []
    for t in model.inputs:
        dims = [batch if i == 0 and d < 0 else (seq if d < 0 else d) for i, d in enumerate(t.shape)]
        parts.append(f"{t.name}:{'x'.join(str(d) for d in dims)}")
    return ",".join(parts)


def _trt_config(s: Session) -> RuntimeConfig:
    """TensorRT EP, fp16, engine and timing caches, one min/opt/max profile from the buckets."""
    batches = sorted(b for b, _ in s.buckets)
    seq = max(q for _, q in s.buckets)
    cache = str(s.workdir / "trt-cache")
    options = {
        "trt_fp16_enable": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": cache,
        "trt_profile_min_shapes": _trt_shapes(s.model, 1, 1),
        "trt_profile_opt_shapes": _trt_shapes(s.model, batches[len(batches) // 2], seq),
        "trt_profile_max_shapes": _trt_shapes(s.model, batches[-1], seq),
    }
    return RuntimeConfig(provider="tensorrt", trt_options=options)


def _choose(s: Session) -> tuple[Candidate | None, float, str]:
    """The fastest passing candidate by geometric mean of its speedups over plain."""
    best: Candidate | None = None
    best_gain = 1.0
    for candidate, latency in s.passing:
        gain = math.exp(
            statistics.fmean(math.log(s.plain_latency[b] / t) for b, t in latency.items())
        )
        if gain > best_gain:
            best, best_gain = candidate, gain
    cand, gain = best, best_gain
    if cand is None or gain < _MIN_GAIN:
        reason = (
            "no candidate passed its accuracy gate"
            if not s.passing
            else f"no candidate beat plain by {(_MIN_GAIN - 1):.0%}"
        )
        return None, 1.0, f"plain ORT kept: {reason}"
    return cand, gain, f"{cand.name}: fastest candidate that passed its gate"


def optimize(
    model: str | Path,
    device: str = "cpu",
    test_data: str | Path | Mapping[str, np.ndarray] | None = None,
    output_dir: str | Path | None = None,
    level: str = "o2",
    tolerance: float | Mapping[str, float] | None = None,
    batch_sizes: Sequence[int] = (1, 8, 32),
    shape_buckets: Sequence[Sequence[int]] | None = None,
    progress: bool | ProgressFn = True,
    cache_dir: str | Path | None = None,
    seq: int | None = None,
    eval_set: str | Path | None = None,
    task_tolerance: float = DEFAULT_TASK_TOLERANCE,
) -> OptimizeResult:
    """Optimize an ONNX model, a pipeline bundle's model, or a generation bundle's encoder and
    decoder, for ``device`` and write a verified artifact.

    Args:
        model: path of the ONNX model, of a pipeline bundle (a directory with
            ``pipeline.json``): its model is optimized and a derived bundle is written; or of a
            generation bundle (``generation.json``): its encoder and decoder step are optimized
            and judged by teacher-forced logits and greedy-token agreement (``_generation``),
            and a derived generation bundle is written.
        device: ``cpu`` or ``cuda``.
        test_data: inputs to verify with (npz path or dict of arrays, batch dim first); by default
            drawn from the signature (and the report says so). For a generation bundle: audio
            clips, one 1-D float32 array per key (default: synthetic clips).
        output_dir: where to write the artifact (default: next to the model, ``<stem>.blade``;
            for a bundle ``<bundle>.blade``, a derived bundle with the artifact in ``blade/``).
        level: ``o1`` (lossless passes; fp16 on GPU) or ``o2`` (adds int8).
        tolerance: overrides the gates: a float is the cosine floor of lossy tiers; a mapping
            may set ``rel_l2``, ``cosine``, ``top1`` (a generation bundle's: ``logits_cosine``,
            ``logits_max_abs``, ``agree_share``, ``mean_prefix``).
        batch_sizes: batch sizes to time; the speedup is taken at their median (a generation
            bundle's: decoder rows of a step).
        shape_buckets: ``[batch, seq]`` shapes for CUDA graphs (default: each batch size at the
            test data's sequence length).
        progress: True prints a line per pass; a callable gets ``(pass, status)``.
        cache_dir: artifact cache (default ``~/.cache/autoai/blade``).
        seq: sequence length of drawn test data (default 128; a bundle's ``max_length``).
        eval_set: bundles only: a JSONL file of labelled examples (``eas_server.pipeline``
            ``read_examples``). Every lossy step is then also scored by the task metric
            (accuracy, or slot F1) through the bundle's own pre/post-processing and refused when
            it loses more than ``task_tolerance`` points against the fp32 plain model; without
            ``test_data``, its first texts (encoded by the bundle) feed the numeric gates too.
            Without it a bundle is judged by the numeric gates only (the report says so).
        task_tolerance: points of the task metric a lossy step may lose (0.5 = 0.005 of
            accuracy).

    Returns:
        The artifact directory (for a bundle: the derived bundle), the report and the speedup.

    Raises:
        InvalidModel: not ONNX, truncated, unsupported opset, a bundle that does not load or is
            already optimized; nothing is written.
        InvalidTestData: test data that does not fit the model, an evaluation set that does not
            fit the bundle, or an evaluation set for a model that is no bundle; nothing is
            written.
        RuntimeNotAvailable: ``device="cuda"`` without onnxruntime-gpu.
        ValueError: bad ``device``, ``level``, ``batch_sizes`` or ``task_tolerance``, or a
            bundle's ``output_dir`` inside the bundle.
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if level not in ("o1", "o2"):
        raise ValueError(f"level must be 'o1' or 'o2', got {level!r}")
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes must be positive integers, got {list(batch_sizes)}")
    task_tolerance = check_tolerance(task_tolerance)
    if is_generation_bundle(model):
        if eval_set is not None:
            raise InvalidTestData(
                f"an evaluation set of labelled texts ({eval_set}) scores a pipeline bundle; "
                f"{model} is a generation bundle, judged on audio clips: pass them as test_data"
            )
        flow = EncoderFlow(_gpu_passes if device == "cuda" else _cpu_passes)
        out, report, speedup = optimize_generation(
            model,
            device=device,
            test_data=test_data,
            output_dir=output_dir,
            level=level,
            tolerance=tolerance,
            batch_sizes=batch_sizes,
            progress=progress if callable(progress) else (_print_progress if progress else None),
            cache_dir=cache_dir,
            flow=flow,
        )
        return OptimizeResult(out, report, speedup)
    if not is_bundle(model):
        if eval_set is not None:
            raise InvalidTestData(
                f"an evaluation set ({eval_set}) needs a pipeline bundle (a directory with "
                f"pipeline.json, tokenizer and labels) to score the task through; {model} is not "
                "one. Optimize the bundle, or leave the evaluation set out"
            )
        run = _Run(device, test_data, level, tolerance, batch_sizes, shape_buckets, seq or 128)
        info = inspect_model(model)
        out_dir = Path(output_dir) if output_dir else info.path.with_suffix(".blade")
        return _optimize_model(run, info, out_dir, progress, cache_dir)
    source = open_bundle(model)
    task = TaskGate.open(source.bundle, eval_set, task_tolerance) if eval_set else None
    data_note = None
    if test_data is None and task is not None:
        test_data, data_note = task.test_data(_EVAL_TEST_ROWS)
    run = _Run(
        device,
        test_data,
        level,
        tolerance,
        batch_sizes,
        shape_buckets,
        seq or source.bundle.spec.max_length,
        source,
        task,
        data_note,
    )
    info = inspect_model(source.bundle.model_path)
    out_dir = Path(output_dir) if output_dir else source.default_output()
    if out_dir.resolve().is_relative_to(source.root.resolve()):
        raise ValueError(
            f"output_dir {out_dir} would replace the bundle {source.root} or write inside it: "
            "give a directory outside the bundle (default: BUNDLE.blade beside it)"
        )
    staging = source.staging(out_dir)
    try:
        result = _optimize_model(run, info, staging / ARTIFACT_DIR, progress, cache_dir)
        source.finish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return OptimizeResult(out_dir, result.report, result.speedup)


@dataclass(frozen=True)
class _Run:
    """The settings of one optimize call that decide its outcome (and its cache key)."""

    device: str
    test_data: str | Path | Mapping[str, np.ndarray] | None
    level: str
    tolerance: float | Mapping[str, float] | None
    batch_sizes: Sequence[int]
    shape_buckets: Sequence[Sequence[int]] | None
    seq: int
    source: SourceBundle | None = None
    task: TaskGate | None = None
    data_note: str | None = None

    def key_extra(self) -> dict[str, Any] | None:
        """A bundle's files, and the evaluation set and tolerance when given."""
        if self.source is None:
            return None
        return {**self.source.key(), **(self.task.key() if self.task else {})}

    def task_section(self) -> dict[str, Any] | None:
        if self.source is None:
            return None
        return self.task.summary() if self.task else numeric_only(self.source.bundle.spec.task)


def _optimize_model(
    run: _Run,
    info: ModelInfo,
    out_dir: Path,
    progress: bool | ProgressFn,
    cache_dir: str | Path | None,
) -> OptimizeResult:
    """Optimize one ONNX model into an artifact at ``out_dir`` (from the cache when there)."""
    data = load_test_data(run.test_data, info) if run.test_data is not None else None
    if run.device == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeNotAvailable(
                "device='cuda' needs onnxruntime-gpu: pip install 'autoai[gpu]'"
            )
    hw = detect_hardware(run.device)
    synthetic = data is None
    batch_sizes = run.batch_sizes
    if data is None:
        data = synthesize(info, rows=max(32, max(batch_sizes)), seq=run.seq)
    seq_len = next(
        (v.shape[1] for k, v in data.items() if k == info.token_input and v.ndim == 2), run.seq
    )
    buckets = (
        [list(b) for b in run.shape_buckets]
        if run.shape_buckets
        else [[b, seq_len] for b in sorted(set(batch_sizes))]
    )
    key = _artifact.cache_key(
        info, hw, run.level, batch_sizes, buckets, run.tolerance, data, synthetic, run.key_extra()
    )
    cached = _artifact.from_cache(key, out_dir, cache_dir)
    if cached is not None:
        if callable(progress) or progress:
            _say(progress, "cache", "hit")
        return OptimizeResult(out_dir, cached, float(cached["speedup"]))
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="blade-") as tmp:
        report_progress = (
            progress if callable(progress) else (_print_progress if progress else None)
        )
        s = Session(
            info,
            hw,
            data,
            batch_sizes,
            run.tolerance,
            buckets,
            Path(tmp),
            report_progress,
            run.task,
        )
        (_gpu_passes if run.device == "cuda" else _cpu_passes)(s, run.level)
        chosen, gain, why = _choose(s)
        median_batch = sorted(s.batch_sizes)[len(s.batch_sizes) // 2]
        speedup = _speedup_at(s, chosen, median_batch) if chosen is not None else 1.0
        outcome = _outcome(s, chosen, why, speedup, gain, synthetic, time.time() - started, key)
        outcome = dataclasses.replace(
            outcome,
            bundle=str(run.source.root) if run.source else None,
            task=run.task_section(),
            data_note=run.data_note,
        )
        report = _artifact.build_report(outcome)
        _artifact.write(out_dir, outcome, report, cache_dir)
    return OptimizeResult(out_dir, report, speedup)


def _outcome(
    s: Session,
    chosen: Candidate | None,
    why: str,
    speedup: float,
    gain: float,
    synthetic: bool,
    elapsed: float,
    key: str,
) -> _artifact.Outcome:
    """The run's record for the artifact writer (plain ORT on the source model when nothing was
    chosen)."""
    tier = chosen.tier if chosen else "lossless"
    return _artifact.Outcome(
        model=s.model,
        hardware=s.hw,
        data=s.data,
        reference=s.reference,
        mask_outputs=tuple(s.token_outputs),
        batch_sizes=tuple(s.batch_sizes),
        buckets=tuple(tuple(b) for b in s.buckets),
        plain_runtime=s.plain_config,
        plain_latency=dict(s.plain_latency),
        plain_metrics=dict(s.plain_metrics),
        passes=tuple(s.passes),
        chosen=chosen.name if chosen else "plain",
        model_path=chosen.model_path if chosen else s.model.path,
        tier=tier,
        gate=s.gate(tier),
        runtime=chosen.runtime if chosen else s.plain_config,
        reason=why,
        speedup=speedup,
        speedup_geomean=gain,
        synthetic=synthetic,
        elapsed_s=elapsed,
        key=key,
    )


def _speedup_at(s: Session, chosen: Candidate, batch: int) -> float:
    for cand, latency in s.passing:
        if cand is chosen:
            return s.plain_latency[batch] / latency[batch]
    return 1.0


def _say(progress: bool | ProgressFn, name: str, status: str) -> None:
    if callable(progress):
        progress(name, status)
    elif progress:
        _print_progress(name, status)


def _print_progress(name: str, status: str) -> None:
    if status != "running":
        print(f"blade: {name}: {status}", flush=True)
