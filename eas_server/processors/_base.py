"""The processor contract: what eas-server needs from a runtime (EAS calls these processors)."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..batching import Padding

__all__ = ["Processor", "TensorSpec"]


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output.

    Attributes:
        name: tensor name.
        datatype: OIP datatype (``FP32``, ``INT64``, ``BYTES``...).
        shape: dims of ONE example, without the batch dim when the model batches; -1 = variable.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]


class Processor(abc.ABC):
    """Loads a model and runs batches of it.

    Lifecycle: ``load()`` then ``warmup()`` (both may take seconds; called off the event loop),
    then ``run()`` from ``workers`` threads at once, each passing its own worker index, then
    ``close()``.
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
