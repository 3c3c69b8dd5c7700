"""What the server knows about its model, and the pure checks of a request against it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from eas_client import InferRequest, ProtocolError, RequestInput, resolve_raw_input

from ._errors import InvalidInput, ModelNotFound
from .processors import TensorSpec

__all__ = ["ModelInfo", "RequestPlan", "plan_request"]


@dataclass(frozen=True)
class ModelInfo:
    """The served model version, as clients see it.

    Attributes:
        name, version: what clients address.
        inputs, outputs: the signature, per example (no batch dim when ``batchable``).
        batchable: the model has a leading variable batch dim on every tensor.
        max_request_rows: hard limit on the rows of one request (larger ones are refused; those
            between ``max_batch_size`` and this are split by the batcher).
        platform, backend: Triton's names for the runtime.
    """

    name: str
    version: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batchable: bool
    max_request_rows: int
    platform: str
    backend: str

    def check_address(self, name: str, version: str | None) -> None:
        """Raises ModelNotFound unless ``name``/``version`` is this model."""
        if name != self.name or (version is not None and version != self.version):
            asked = name if version is None else f"{name} version {version}"
            served = f"{self.name} version {self.version}"
            raise ModelNotFound(f"model {asked} is not served here; this server serves {served}")

    def shape(self, spec: TensorSpec) -> list[int]:
        """Metadata shape: with a leading -1 when the model batches (Triton's convention)."""
        return ([-1] if self.batchable else []) + list(spec.shape)


@dataclass(frozen=True, slots=True)
class RequestPlan:
    """A request checked against the model: the feed, the outputs to return, scheduling."""

    feed: dict[str, np.ndarray]
    outputs: list[str]
    rows: int
    priority: int
    timeout_s: float | None


def _int_parameter(parameters: Mapping[str, Any], key: str) -> int | None:
    value = parameters.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"parameter {key!r} must be a non-negative integer, got {value!r}")
    return value


def _resolve_raw(request: InferRequest, model: ModelInfo) -> list[RequestInput]:
    if len(model.inputs) != 1:
        count = len(model.inputs)
        raise InvalidInput(
            f"a raw binary request needs a model with one input; {model.name} has {count}"
        )
    spec = model.inputs[0]
    shape = ([1] if model.batchable else []) + list(spec.shape)
    try:
        return [
            resolve_raw_input(
                request.inputs[0], name=spec.name, datatype=spec.datatype, shape=shape
            )
        ]
    except ProtocolError as exc:
        raise InvalidInput(str(exc)) from exc


def _check_input(
    given: RequestInput, specs: Mapping[str, TensorSpec], model: ModelInfo
) -> list[int]:
    spec = specs.get(given.name)
    if spec is None:
        raise InvalidInput(f"unknown input {given.name!r}; the model's inputs are {sorted(specs)}")
    if given.datatype != spec.datatype:
        raise InvalidInput(
            f"input {given.name!r} has datatype {given.datatype}; the model expects {spec.datatype}"
        )
    expected = model.shape(spec)
    shape = list(given.shape)
    fits = len(shape) == len(expected) and all(
        e < 0 or e == g for e, g in zip(expected, shape, strict=True)
    )
    if not fits:
        raise InvalidInput(
            f"input {given.name!r} has shape {shape}; the model expects {expected} (-1: any)"
        )
    if model.batchable and shape[0] < 1:
        raise InvalidInput(f"input {given.name!r} has an empty batch dimension")
    return shape


def plan_request(request: InferRequest, model: ModelInfo) -> RequestPlan:
    """Check a decoded request against the model's signature.

    Raises:
        InvalidInput: unknown or missing inputs; wrong datatype or shape; batch dims that disagree
            or exceed the hard limit; unknown outputs; bad ``priority``/``timeout``.
    """
    specs = {s.name: s for s in model.inputs}
    inputs = _resolve_raw(request, model) if request.is_raw else request.inputs
    feed: dict[str, np.ndarray] = {}
    rows: int | None = None
    for given in inputs:
        shape = _check_input(given, specs, model)
        if model.batchable:
            if rows is not None and shape[0] != rows:
                raise InvalidInput(
                    f"inputs disagree on the batch dimension ({rows} and {shape[0]})"
                )
            rows = shape[0]
        feed[given.name] = np.ascontiguousarray(given.data)
    missing = [name for name in specs if name not in feed]
    if missing:
        raise InvalidInput(f"missing inputs {missing}; the model needs {sorted(specs)}")
    rows = rows or 1
    if rows > model.max_request_rows:
        limit = model.max_request_rows
        raise InvalidInput(f"a batch of {rows} rows exceeds this server's limit of {limit}")
    names = [s.name for s in model.outputs]
    outputs = names if request.outputs is None else [o.name for o in request.outputs]
    unknown = [o for o in outputs if o not in names]
    if unknown:
        raise InvalidInput(f"unknown outputs {unknown}; the model's outputs are {names}")
    priority = _int_parameter(request.parameters, "priority") or 0
    timeout_us = _int_parameter(request.parameters, "timeout")
    return RequestPlan(feed, outputs, rows, priority, None if not timeout_us else timeout_us / 1e6)
