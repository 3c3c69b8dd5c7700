"""Processor ``blade``: serves an artifact written by ``blade.optimize``.

Importing this module registers it with eas-server (``eas-server --processor blade --model DIR``).
At load it runs the artifact's reference inputs and refuses to start when the outputs disagree
with the fp32 reference beyond the artifact's gate, so a corrupted or mismatched artifact never
becomes ready. Metadata and /config show the original model's signature.

A derived generation bundle (``generation.json`` with blade's ``blade.json`` beside it) is served
by ``BladeSeq2SeqProcessor``: the seq2seq processor's engine (iteration-level batching, the
generate routes) over blade's runtime (``BladeSeq2Seq``: caches on the device, CUDA graphs per
bucket, as the bundle says), after the same kind of check: the stored clips' teacher-forced
logits through the runtime's own caches, under the bundle's gate.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from eas_server import (
    ModelLoadError,
    Padding,
    Processor,
    TensorSpec,
    register_processor,
    usable_cores,
)
from eas_server.generation._spec import GENERATION_SPEC, GenerationSpec
from eas_server.processors.onnx import ort_datatype
from eas_server.processors.seq2seq import Seq2SeqProcessor

from ._artifact import Artifact
from ._errors import BladeError
from ._genartifact import GenerationArtifact, is_generation_bundle
from ._runtime import BladeRuntime
from ._seq2seq import BladeSeq2Seq
from ._verify import check, compare

__all__ = ["BladeProcessor", "BladeSeq2SeqProcessor", "create"]

_NUMPY_TO_ORT = {
    "float32": "tensor(float)",
    "float16": "tensor(float16)",
    "float64": "tensor(double)",
    "int64": "tensor(int64)",
    "int32": "tensor(int32)",
    "int16": "tensor(int16)",
    "int8": "tensor(int8)",
    "uint8": "tensor(uint8)",
    "uint16": "tensor(uint16)",
    "uint32": "tensor(uint32)",
    "uint64": "tensor(uint64)",
    "bool": "tensor(bool)",
}


def _spec(doc: Mapping[str, object], batchable: bool) -> TensorSpec:
    shape = [int(d) for d in doc["shape"]]  # type: ignore[attr-defined]
    datatype = ort_datatype(_NUMPY_TO_ORT[str(doc["dtype"])])
    return TensorSpec(str(doc["name"]), datatype, tuple(shape[1:] if batchable else shape))


class BladeProcessor(Processor):
    """Serve a blade artifact directory."""

    kind = "blade"
    platform = "onnxruntime_onnx"
    backend = "blade"

    def __init__(
        self,
        model_path: str,
        *,
        workers: int = 1,
        intra_op_threads: int | None = None,
        spinning: bool = False,
    ):
        super().__init__(
            model_path, workers=workers, intra_op_threads=intra_op_threads, spinning=spinning
        )
        self._runtimes: list[BladeRuntime] = []
        self.artifact: Artifact | None = None

    def load(self) -> None:
        try:
            self.artifact = artifact = Artifact(self.model_path)
            config = artifact.runtime
            if self.intra_op_threads:
                config.intra_op_threads = self.intra_op_threads
            elif config.provider == "cpu":
                config.intra_op_threads = max(1, usable_cores() // self.workers)
            self._runtimes = [
                BladeRuntime(artifact.model_path, config, spinning=self.spinning)
                for _ in range(self.workers)
            ]
        except (BladeError, OSError) as exc:
            raise ModelLoadError(f"cannot load blade artifact {self.model_path}: {exc}") from exc
        except Exception as exc:  # onnxruntime's own errors
            raise ModelLoadError(f"cannot load blade artifact {self.model_path}: {exc}") from exc
        self._verify()

    def _verify(self) -> None:
        assert self.artifact is not None
        inputs, expected = self.artifact.reference()
        for index, runtime in enumerate(self._runtimes):
            got = self.artifact.masked(inputs, runtime.run(inputs))
            passed, reason = check(compare(expected, got), self.artifact.gate)
            if not passed:
                raise ModelLoadError(
                    f"blade artifact {self.model_path} failed its start-up verification on "
                    f"worker {index} ({self.artifact.tier} gate): {reason}"
                )

    @property
    def inputs(self) -> list[TensorSpec]:
        assert self.artifact is not None
        return [_spec(t, self.batchable) for t in self.artifact.doc["signature"]["inputs"]]

    @property
    def outputs(self) -> list[TensorSpec]:
        assert self.artifact is not None
        return [_spec(t, self.batchable) for t in self.artifact.doc["signature"]["outputs"]]

    @property
    def batchable(self) -> bool:
        assert self.artifact is not None
        return bool(self.artifact.doc.get("batchable", False))

    @property
    def padding(self) -> Padding | None:
        assert self.artifact is not None
        cfg = self.artifact.runtime
        if not cfg.pad_inputs:
            return None
        return Padding(
            inputs={k: (int(v[0]), v[1]) for k, v in cfg.pad_inputs.items()},
            outputs=dict(cfg.pad_outputs),
        )

    @property
    def device(self) -> str:
        assert self.artifact is not None
        return "cpu" if self.artifact.runtime.provider == "cpu" else "gpu"

    def run(
        self, inputs: dict[str, np.ndarray], worker: int, outputs: frozenset[str] | None = None
    ) -> Mapping[str, np.ndarray]:
        from eas_server import InvalidInput, ProcessorError

        try:
            return self._runtimes[worker].run(inputs, outputs)
        except Exception as exc:
            kind = type(exc).__name__
            if kind in ("InvalidArgument", "InvalidGraph") or "INVALID_ARGUMENT" in str(exc):
                raise InvalidInput(f"the model rejected the input: {exc}") from exc
            raise ProcessorError(f"{kind}: {exc}") from exc

    def sample_inputs(self, rows: int = 1, variable: int = 8) -> dict[str, np.ndarray]:
        assert self.artifact is not None
        inputs, _ = self.artifact.reference()
        return {k: v[:rows] for k, v in inputs.items()}

    def close(self) -> None:
        self._runtimes = []


class BladeSeq2SeqProcessor(Seq2SeqProcessor):
    """Serve a generation bundle blade derived (see the module docstring); the arguments are
    ``Seq2SeqProcessor``'s."""

    kind = "blade"
    backend = "blade"

    def __init__(
        self,
        model_path: str,
        *,
        workers: int = 1,
        intra_op_threads: int | None = None,
        spinning: bool = False,
        max_batch_size: int = 32,
        max_queue_size: int = 256,
    ):
        super().__init__(
            model_path,
            workers=workers,
            intra_op_threads=intra_op_threads,
            spinning=spinning,
            max_batch_size=max_batch_size,
            max_queue_size=max_queue_size,
            runtime_factory=self._blade_runtime,
        )
        self.artifact: GenerationArtifact | None = None

    def _blade_runtime(
        self, root: Path, spec: GenerationSpec, threads: int, spinning: bool
    ) -> BladeSeq2Seq:
        try:
            self.artifact = artifact = GenerationArtifact(root)
            config = artifact.runtime
            if config.provider == "cpu":
                config = config.with_threads(threads)
            runtime = BladeSeq2Seq(artifact.encoder, artifact.decoder, config, spinning=spinning)
            passed, reason = artifact.verify(runtime)
        except (BladeError, OSError) as exc:
            raise ModelLoadError(f"cannot load derived generation bundle {root}: {exc}") from exc
        except Exception as exc:  # onnxruntime's own errors
            raise ModelLoadError(f"cannot load derived generation bundle {root}: {exc}") from exc
        if not passed:
            raise ModelLoadError(
                f"derived generation bundle {root} failed its start-up verification "
                f"({artifact.tier} gate): {reason}"
            )
        return runtime


def create(model_path: str, **options: Any) -> Processor:
    """The ``blade`` processor for ``model_path``: ``BladeSeq2SeqProcessor`` for a generation
    bundle (the directory or its ``generation.json``), else ``BladeProcessor``."""
    root = Path(model_path)
    if root.name == GENERATION_SPEC:
        root = root.parent
    if is_generation_bundle(root):
        return BladeSeq2SeqProcessor(model_path, **options)
    return BladeProcessor(model_path, **options)


register_processor("blade", create)
