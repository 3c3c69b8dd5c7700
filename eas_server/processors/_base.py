"""The processor contract: what eas-server needs from a runtime (EAS calls these processors)."""

from __future__ import annotations

import abc
from collections.abc import Mapping

import numpy as np

from .._tensors import TensorSpec
from ..batching import Padding

__all__ = ["Processor", "TensorSpec"]


class Processor(abc.ABC):
    """Loads a model and runs batches of it: the contract every runtime meets, built-in
    (``onnx``, ``pipeline``, ``blade``) or a custom processor from an installed package.

    Lifecycle: ``__init__(model_path, workers=, intra_op_threads=, spinning=)`` (cheap: no
    loading), ``load()`` then ``warmup()`` (both may take seconds; called off the event loop),
    then ``run()`` from ``workers`` threads at once, each passing its own worker index, then
    ``close()``.

    Writing one (EAS's custom processors):

    - Implement ``load`` (raise ``ModelLoadError`` saying what is wrong), the ``inputs`` and
      ``outputs`` properties (``TensorSpec``: OIP datatypes; shapes without the batch dim when
      ``batchable``; -1 = variable), ``batchable`` (True when the first dim of every input and
      output is the batch: the dynamic batcher then concatenates requests along it, and ``run``
      must return outputs with the same number of rows, in order), and ``run``.
    - ``run(inputs, worker, outputs)`` gets numpy arrays by input name, batch dim first (BYTES
      as object arrays of ``bytes``), and returns arrays by output name (more than asked is
      fine). Bad values raise ``InvalidInput`` (the client gets 400 with the message), other
      failures ``ProcessorError`` (500). It is called from several threads (one per worker):
      keep per-worker state indexed by ``worker``.
    - Optional: ``kind`` (defaults to the name it is installed under), ``platform`` and
      ``backend`` (shown in metadata and /config), ``device``, ``padding`` (only when padding
      requests of different lengths to a common length is safe), ``warmup`` /
      ``sample_inputs``, ``close``.
    - Install it under a name in the ``autoai.processors`` entry-point group of your package
      (``[project.entry-points."autoai.processors"] NAME = "pkg.module:MyProcessor"``); the
      class or any callable ``factory(model_path, **options) -> Processor`` will do. Then
      ``eas-server --processor NAME --model PATH`` or ``"processor": "NAME"`` in the service
      JSON serves it, with no change to eas-server.
    """

    kind: str = ""
    """The processor name used on the command line and in the store (``onnx``, ``blade``)."""
    platform: str = ""
    """Triton ``platform`` string reported in metadata."""
    backend: str = ""
    """Triton ``backend`` string reported in /config."""

    def __init__(
        self,
        model_path: str,
        *,
        workers: int = 1,
        intra_op_threads: int | None = None,
        spinning: bool = False,
    ):
        self.model_path = model_path
        self.workers = workers
        self.intra_op_threads = intra_op_threads
        self.spinning = spinning

    @abc.abstractmethod
    def load(self) -> None:
        """Load the model; raises ``ModelLoadError`` with the reason."""

    @property
    @abc.abstractmethod
    def inputs(self) -> list[TensorSpec]: ...

    @property
    @abc.abstractmethod
    def outputs(self) -> list[TensorSpec]: ...

    @property
    @abc.abstractmethod
    def batchable(self) -> bool:
        """True when every input and output has a leading variable batch dim."""

    @property
    def padding(self) -> Padding | None:
        """Where padding requests to a common length is safe; None (never) by default."""
        return None

    @property
    def device(self) -> str:
        """``cpu`` or ``gpu``, for /config's instance_group."""
        return "cpu"

    def warmup(self) -> None:
        """Run the model once per worker on synthetic inputs (first-run costs off the hot path)."""
        for worker in range(self.workers):
            self.run(self.sample_inputs(), worker, None)

    def sample_inputs(self, rows: int = 1, variable: int = 8) -> dict[str, np.ndarray]:
        """Synthetic inputs: zeros (token id 0 is valid in every vocabulary), variable dims set to
        ``variable``, BYTES as b"x"."""
        feed: dict[str, np.ndarray] = {}
        from eas_client import dtype_of

        for spec in self.inputs:
            dims = tuple(variable if d < 0 else d for d in spec.shape)
            shape = ((rows,) if self.batchable else ()) + dims
            if spec.datatype == "BYTES":
                feed[spec.name] = np.full(shape, b"x", dtype=object)
            else:
                feed[spec.name] = np.zeros(shape, dtype=dtype_of(spec.datatype))
        return feed

    @abc.abstractmethod
    def run(
        self, inputs: dict[str, np.ndarray], worker: int, outputs: frozenset[str] | None = None
    ) -> Mapping[str, np.ndarray]:
        """Run one batch on worker ``worker``'s session; ``outputs`` (None: all) are the ones to
        return (more is allowed).

        Raises:
            InvalidInput: the runtime rejected the values (e.g. an index out of range).
            ProcessorError: any other runtime failure.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions."""
