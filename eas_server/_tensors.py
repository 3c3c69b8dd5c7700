"""``TensorSpec``: one input or output as processors, metadata and pipelines describe it. A leaf
module, so that the pipeline core (below the processors) and the processors share it."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TensorSpec"]


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
