"""Processor ``seq2seq``: serves a generation bundle (``generation.json``, ``encoder.onnx``,
``decoder.onnx``, optionally ``tokenizer.json``): 16 kHz audio in, token ids (and text) out.

Unlike the other processors it does not run request batches handed over by the dynamic batcher:
generation is scheduled per decoder step, with requests joining and leaving the running batch
between steps (``eas_server.generation``). Its ``engine`` takes every request (``/generate``,
``/generate_stream``, ``/infer`` and gRPC); the engine's scheduler forms the encoder batches from
the requests waiting at each step, the job the dynamic batcher does for other models.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .._cpu import usable_cores
from .._errors import ModelLoadError, ProcessorError
from ..generation._cache import HostCache
from ..generation._engine import GenerationEngine, GenerationObserver
from ..generation._mel import LogMel
from ..generation._scheduler import Runtime, Scheduler
from ..generation._spec import (
    DECODER_FILE,
    ENCODER_FILE,
    GENERATION_SPEC,
    TOKENIZER_FILE,
    GenerationError,
    GenerationSpec,
    cache_names,
    read_spec,
)
from ._base import Processor, TensorSpec
from .onnx import _load_error, _ort, session_options

__all__ = ["OrtSeq2Seq", "RuntimeFactory", "Seq2SeqProcessor", "ServedRuntime"]

log = logging.getLogger("eas_server.seq2seq")


class OrtSeq2Seq:
    """The encoder and decoder step on ONNX Runtime (CPU, or CUDA when available): the
    scheduler's ``Runtime``."""

    def __init__(self, root: Path, spec: GenerationSpec, *, threads: int, spinning: bool):
        ort = _ort()
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        if "CUDAExecutionProvider" in providers and hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
        self.device = "gpu" if providers[0] == "CUDAExecutionProvider" else "cpu"
        self.encoder = self._session(ort, root / ENCODER_FILE, providers, threads, spinning)
        self.decoder = self._session(ort, root / DECODER_FILE, providers, threads, spinning)
        layers = spec.layers
        self.self_names = cache_names(layers, "self")
        self.cross_names = cache_names(layers, "cross")
        self.new_names = cache_names(layers, "new")
        _check_io(self.encoder, (["input_features"], self.cross_names), root / ENCODER_FILE)
        decoder_io = (["tokens", "positions", *self.self_names, *self.cross_names],
                      ["logits", *self.new_names])  # fmt: skip
        _check_io(self.decoder, decoder_io, root / DECODER_FILE)
        self.spec = spec

    @staticmethod
    def _session(ort: Any, path: Path, providers: list[str], threads: int, spin: bool) -> Any:
        if not path.is_file():
            raise ModelLoadError(f"the generation bundle has no {path.name} (expected {path})")
        try:
            return ort.InferenceSession(
                str(path), sess_options=session_options(threads, spin), providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own pybind types
            raise ModelLoadError(_load_error(str(path), exc)) from exc

    def encode(self, features: np.ndarray) -> list[np.ndarray]:
        """The cross-attention keys/values per layer (``cache_names(L, "cross")`` order)."""
        out = self.encoder.run(self.cross_names, {"input_features": features})
        return [np.asarray(a) for a in out]

    def decode(
        self,
        tokens: np.ndarray,
        positions: np.ndarray,
        self_kv: list[np.ndarray],
        cross_kv: list[np.ndarray],
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        feed = {"tokens": tokens, "positions": positions}
        feed.update(zip(self.self_names, self_kv, strict=True))
        feed.update(zip(self.cross_names, cross_kv, strict=True))
        logits, *new = self.decoder.run(["logits", *self.new_names], feed)
        return np.asarray(logits), [np.asarray(a) for a in new]

    def new_cache(self, capacity: int, sizes: tuple[int, ...]) -> HostCache:
        """The rows' caches in host memory (ONNX Runtime copies them to the device per step when
        the session runs on CUDA; blade's runtime keeps them there)."""
        return HostCache(self.decode, capacity, sizes)


def _check_io(session: Any, io: tuple[list[str], list[str]], path: Path) -> None:
    names = ([t.name for t in session.get_inputs()], [t.name for t in session.get_outputs()])
    for got, want, what in zip(names, io, ("inputs", "outputs"), strict=True):
        if sorted(got) != sorted(want):
            raise ModelLoadError(
                f"{path} has {what} {got}; a generation bundle's {path.name} has {want} "
                "(docs/generation.md)"
            )


class ServedRuntime(Runtime, Protocol):
    """A scheduler ``Runtime`` the processor serves; ``device`` is ``cpu`` or ``gpu``."""

    device: str


RuntimeFactory = Callable[[Path, GenerationSpec, int, bool], ServedRuntime]
"""(bundle directory, its spec, intra-op threads, spinning) -> the runtime to serve."""


def _ort_runtime(root: Path, spec: GenerationSpec, threads: int, spinning: bool) -> OrtSeq2Seq:
    return OrtSeq2Seq(root, spec, threads=threads, spinning=spinning)


class Seq2SeqProcessor(Processor):
    """Serve a generation bundle directory (or its ``generation.json``).

    Args (besides ``Processor``'s):
        max_batch_size: decoder rows of the running batch (a beam takes one each).
        max_queue_size: requests waiting to start before QueueFull.
        observer: where the engine reports generation metrics (set before ``load``).
        runtime_factory: builds the runtime at ``load`` (default: ``OrtSeq2Seq``; blade's
            processor passes its own for a bundle it optimized).
    """

    kind = "seq2seq"
    platform = "seq2seq"
    backend = "onnxruntime"

    def __init__(
        self,
        model_path: str,
        *,
        workers: int = 1,
        intra_op_threads: int | None = None,
        spinning: bool = False,
        max_batch_size: int = 32,
        max_queue_size: int = 256,
        runtime_factory: RuntimeFactory | None = None,
    ):
        super().__init__(
            model_path, workers=1, intra_op_threads=intra_op_threads, spinning=spinning
        )
        if workers != 1:
            log.info("seq2seq: one engine thread runs every step (workers=%d ignored)", workers)
        self.capacity = max_batch_size
        self.max_queue = max_queue_size
        self.observer: GenerationObserver | None = None
        self.engine: GenerationEngine | None = None
        self.spec: GenerationSpec | None = None
        self.runtime: ServedRuntime | None = None
        self.runtime_factory: RuntimeFactory = runtime_factory or _ort_runtime
        self._outputs: list[TensorSpec] = []

    def load(self) -> None:
        # The log-mel projection is numpy's only BLAS call here; with OpenBLAS's own threads
        # beside ONNX Runtime's on the same cores it ran 4-6x slower under load. One thread
        # (process-wide: the server's cores belong to the runtime).
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")
        root = Path(self.model_path)
        if root.name == GENERATION_SPEC and root.is_file():
            root = root.parent
        try:
            spec = read_spec(root)
        except GenerationError as exc:
            raise ModelLoadError(str(exc)) from None
        threads = self.intra_op_threads or usable_cores()
        self.runtime = runtime = self.runtime_factory(root, spec, threads, self.spinning)
        detokenize: Callable[[list[int]], str] | None = None
        if (root / TOKENIZER_FILE).is_file():
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(root / TOKENIZER_FILE))

            def decode_ids(ids: list[int]) -> str:
                return str(tokenizer.decode(ids, skip_special_tokens=True))

            detokenize = decode_ids

        front_end = LogMel(
            n_mels=spec.n_mels,
            sample_rate=spec.sample_rate,
            n_fft=spec.n_fft,
            hop_length=spec.hop_length,
            n_samples=spec.n_samples,
        )
        scheduler = Scheduler(spec, runtime, front_end.batch, capacity=self.capacity)
        self.engine = GenerationEngine(
            scheduler, max_queue=self.max_queue, detokenize=detokenize, observer=self.observer
        )
        self.spec = spec
        self._outputs = [TensorSpec("tokens", "INT64", (-1,))]
        if detokenize is not None:
            self._outputs.append(TensorSpec("text", "BYTES", (1,)))
        log.info(
            "seq2seq %s: %d decoder layers, vocab %d, %d rows, on %s%s",
            root,
            spec.layers,
            spec.vocab_size,
            self.capacity,
            runtime.device,
            ", with a tokenizer" if detokenize else "",
        )

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec("audio", "FP32", (-1,))]

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._outputs

    @property
    def batchable(self) -> bool:
        return False  # one utterance per request; the engine batches steps, not requests

    @property
    def device(self) -> str:
        return self.runtime.device if self.runtime is not None else "cpu"

    def warmup(self) -> None:
        assert self.engine is not None, "warmup() before load()"
        self.engine.warmup()

    def run(
        self, inputs: dict[str, np.ndarray], worker: int, outputs: frozenset[str] | None = None
    ) -> Mapping[str, np.ndarray]:
        raise ProcessorError(
            "the seq2seq processor takes requests through its generation engine "
            "(/generate, /generate_stream, /infer), not through the dynamic batcher"
        )

    def close(self) -> None:
        if self.engine is not None:
            self.engine.stop()
            self.engine = None
        self.runtime = None
