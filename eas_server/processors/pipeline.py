"""Processor ``pipeline``: serves a bundle (``eas_server.pipeline``): text in, labels out.

The dynamic batcher forms the batch first (BYTES rows of many requests concatenate), then one
``run`` tokenizes the whole batch at once (``tokenizers``' batch encoding, in Rust), pads it to its
longest row, runs the model on an inner processor (``onnx``, or ``blade`` for a bundle whose model
is a blade artifact directory) and decodes the head into the external outputs. Clients see the
external signature only (``text: BYTES [-1]`` in, ``label: BYTES [-1]``, ``score: FP32 [-1]``
out, ...): no tokenizer and no label list on the client.

Padding must not change a row's answer. The onnx processor probes that at load; for a blade
artifact without a padding declaration the same probe runs here. When padding is not safe, rows
of different lengths are never padded together: each length runs as its own sub-batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from .._errors import InvalidInput
from ..batching import Padding
from ..pipeline import BUNDLE_SPEC, Bundle, BundleError, Encoded
from ..pipeline._bundle import read_bundle
from ._base import Processor, TensorSpec
from ._padding import ModelTensor, probe

__all__ = ["PipelineProcessor"]

InnerFactory = Callable[..., Processor]
"""Builds the inner processor by name (``create_processor``): passed in by the registry, which
imports this module, so that this module need not import the registry back."""

log = logging.getLogger("eas_server.pipeline")

_PARALLELISM = "TOKENIZERS_PARALLELISM"
"""The ``tokenizers`` switch between its own thread pool (rayon) and the calling thread."""


def _bind(unbound: Bundle, inner: Processor) -> Bundle:
    """The bundle checked against the loaded model (input names, head width)."""
    if not inner.batchable:
        raise BundleError(
            f"the model {unbound.model_path} has no variable batch dim (expected inputs and "
            "outputs [-1, ...])"
        )
    shapes = {t.name: (-1, *t.shape) for t in inner.outputs}
    return unbound.bind([t.name for t in inner.inputs], shapes)


def _padding_safe(inner: Processor, bundle: Bundle) -> tuple[bool, str]:
    """Whether rows of different lengths may be padded together: the inner processor's own
    declaration (the onnx processor probes at load; blade declares BERT-like models), else the
    padding probe run here on the token inputs, which vary together along one sequence axis."""
    padding = inner.padding
    if padding is not None or inner.kind == "onnx":
        reason = getattr(inner, "padding_reason", "") or f"as the {inner.kind} processor says"
    else:
        tensors = [ModelTensor(name, "INT64", (None, "seq")) for name in bundle.model_inputs]
        padding, reason = probe(lambda feed: inner.run(feed, 0), tensors)
    return padding is not None and "input_ids" in padding.inputs, str(reason)


def _texts(column: np.ndarray, name: str) -> list[str]:
    """A BYTES input as Python strings; InvalidInput names the row that is not UTF-8 text."""
    if column.ndim != 1:
        raise InvalidInput(
            f"input {name!r} has shape {list(column.shape)}; expected one text per row ([n])"
        )
    texts: list[str] = []
    for row, value in enumerate(column.tolist()):
        if not isinstance(value, bytes):
            raise InvalidInput(
                f"input {name!r} row {row}: expected BYTES text, got {type(value).__name__}"
            )
        try:
            texts.append(value.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InvalidInput(
                f"input {name!r} row {row} is not valid UTF-8 text ({exc.reason} at byte "
                f"{exc.start}); send text encoded as UTF-8"
            ) from None
    return texts


class PipelineProcessor(Processor):
    """Serve a bundle directory (or its ``pipeline.json``)."""

    kind = "pipeline"
    platform = "pipeline"
    backend = "pipeline"

    def __init__(
        self,
        model_path: str,
        *,
        workers: int = 1,
        intra_op_threads: int | None = None,
        spinning: bool = False,
        create: InnerFactory,
    ):
        super().__init__(
            model_path, workers=workers, intra_op_threads=intra_op_threads, spinning=spinning
        )
        self._create = create
        self.bundle: Bundle | None = None
        self.inner: Processor | None = None
        self._inputs: list[TensorSpec] = []
        self._outputs: list[TensorSpec] = []
        self._pad_safe = True

    def load(self) -> None:
        # A batch is tokenized on the thread that runs it, unless the user said otherwise: the
        # server's cores belong to the runtime's threads (spinning when each has a core), and
        # rayon's pool waking beside them cost ~0.9 ms of p50 per one-sentence request on 2 cores
        # (benchmarks/pipeline), 15x the tokenizing itself; serial encoding of a batch of 32 short
        # sentences takes a fraction of a millisecond.
        os.environ.setdefault(_PARALLELISM, "false")
        root = Path(self.model_path)
        if root.name == BUNDLE_SPEC and root.is_file():
            root = root.parent
        unbound = read_bundle(root)  # spec, tokenizer, labels: fail before loading the model
        inner = self._create(
            "blade" if unbound.is_blade else "onnx",
            str(unbound.model_path),
            workers=self.workers,
            intra_op_threads=self.intra_op_threads,
            spinning=self.spinning,
        )
        inner.load()
        try:
            self.bundle = bundle = _bind(unbound, inner)
        except BaseException:
            inner.close()
            raise
        self.inner = inner
        ins, outs = bundle.signature()
        self._inputs = [TensorSpec(t.name, t.datatype, t.shape[1:]) for t in ins]
        self._outputs = [TensorSpec(t.name, t.datatype, t.shape[1:]) for t in outs]
        self._pad_safe, reason = _padding_safe(inner, bundle)
        log.info(
            "pipeline %s: task %s on %s (%s); %s",
            root,
            bundle.spec.task,
            bundle.model_path,
            inner.kind,
            "batches padded to their longest row" if self._pad_safe else "each length runs alone",
        )
        log.info("pipeline %s: %s", root, reason)

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._outputs

    @property
    def batchable(self) -> bool:
        return True

    @property
    def padding(self) -> Padding | None:
        """None: text rows concatenate as they are; tokens are padded inside ``run``."""
        return None

    @property
    def device(self) -> str:
        return self.inner.device if self.inner is not None else "cpu"

    def run(
        self, inputs: dict[str, np.ndarray], worker: int, outputs: frozenset[str] | None = None
    ) -> Mapping[str, np.ndarray]:
        bundle, inner = self.bundle, self.inner
        assert bundle is not None and inner is not None, "run() before load()"
        columns = []
        for name in bundle.spec.inputs:
            if name not in inputs:
                raise InvalidInput(
                    f"missing input {name!r} (the pipeline takes {bundle.spec.inputs})"
                )
            columns.append(_texts(inputs[name], name))
        encoded = bundle.encode(columns)
        head = frozenset({bundle.head}) if bundle.head else None
        if self._pad_safe or len(set(encoded.lengths.tolist())) == 1:
            result = inner.run(encoded.feeds, worker, head)
        else:
            result = self._run_by_length(encoded, worker, head)
        return bundle.decode(result, encoded)

    def _run_by_length(
        self, encoded: Encoded, worker: int, head: frozenset[str] | None
    ) -> dict[str, np.ndarray]:
        """Run each length's rows unpadded and put the outputs back in row order (per-token
        outputs padded with zeros to the batch's width, which decoding never reads)."""
        assert self.inner is not None
        assert self.bundle is not None
        spec = self.bundle.spec
        per_token = spec.task == "slots" or (spec.task == "embed" and spec.pooling != "none")
        width = encoded.special.shape[1]
        merged: dict[str, np.ndarray] = {}
        for length in sorted(set(encoded.lengths.tolist())):
            rows = np.flatnonzero(encoded.lengths == length)
            size = max(int(length), 1)
            feeds = {k: v[rows, :size] for k, v in encoded.feeds.items()}
            for name, value in self.inner.run(feeds, worker, head).items():
                arr = np.asarray(value)
                if per_token and arr.ndim >= 2 and size < width:
                    pad = [(0, 0)] * arr.ndim
                    pad[1] = (0, width - size)
                    arr = np.pad(arr, pad)
                if name not in merged:
                    merged[name] = np.zeros((encoded.rows, *arr.shape[1:]), dtype=arr.dtype)
                merged[name][rows] = arr
        return merged

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()
            self.inner = None
