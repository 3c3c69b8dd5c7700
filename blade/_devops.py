"""The device primitives of blade's generation runtime: ONNX Runtime sessions with blade's
options, device buffers addressed by row, and the small sessions (``_cachegraph``) that copy,
resize, fill and write rows of them on the device. A buffer is an ``OrtValue`` allocation bound
to graph inputs and outputs by address (IO binding), so that a prefix of its rows is a tensor
without a copy.

Every device call here runs under blade's process-wide ``_CaptureLock`` (shared) when the device
is a GPU: a synchronizing call of one thread must not fall into another thread's CUDA graph
capture (``_runtime``).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx

from eas_server.generation._spec import cache_names

from ._cachegraph import copy_graph, prefix_graph, resize_graph, zeros_graph
from ._runtime import _CAPTURE, _LEVELS, RuntimeConfig, _providers, _with_cuda_graph

__all__ = ["NUMPY", "Buffer", "Guard", "Ops", "cache_tensors", "io_names", "onnxruntime", "session"]

_ELEM = {
    np.dtype(np.float32): onnx.TensorProto.FLOAT,
    np.dtype(np.float16): onnx.TensorProto.FLOAT16,
}
NUMPY: dict[str, np.dtype[Any]] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
}


def onnxruntime() -> Any:
    import onnxruntime as ort

    return ort


def session(
    model: str | bytes, config: RuntimeConfig, *, graphs: bool = False, spinning: bool = False
) -> Any:
    """An ONNX Runtime session with ``BladeRuntime``'s options (and the CUDA EP's
    ``enable_cuda_graph`` when ``graphs``)."""
    ort = onnxruntime()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[config.graph_level])
    opts.intra_op_num_threads = config.intra_op_threads or (os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    providers = _providers(config)
    if graphs:
        providers = _with_cuda_graph(providers)
    with _CAPTURE.shared() if config.provider != "cpu" else contextlib.nullcontext():
        return ort.InferenceSession(model, sess_options=opts, providers=providers)


class Guard:
    """The capture discipline of one graph-enabled session (``BladeRuntime._guard``)."""

    def __init__(self, gpu: bool):
        self.gpu = gpu
        self._seen = threading.local()

    def shared(self) -> Any:
        return _CAPTURE.shared() if self.gpu else contextlib.nullcontext()

    def run(self, graph_id: int) -> Any:
        """The lock a run of ``graph_id`` needs: alone on this thread's first run (a capture)."""
        if not self.gpu:
            return contextlib.nullcontext()
        seen: set[int] | None = getattr(self._seen, "ids", None)
        if seen is None:
            seen = self._seen.ids = set()
        if graph_id in seen:
            return _CAPTURE.shared()
        seen.add(graph_id)
        return _CAPTURE.alone()


class Buffer:
    """One device allocation, rows first; ``ptr(row)`` is the address of a row."""

    def __init__(self, where: str, shape: tuple[int, ...], dtype: np.dtype):
        self.where = where
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        # an allocation must not fall into another thread's graph capture (_CaptureLock)
        with _CAPTURE.shared() if where != "cpu" else contextlib.nullcontext():
            self.value = onnxruntime().OrtValue.ortvalue_from_shape_and_type(
                list(self.shape), self.dtype, where, 0
            )
        self.row_elems = math.prod(self.shape[1:])

    def ptr(self, row: int = 0) -> int:
        return int(self.value.data_ptr()) + row * self.row_elems * self.dtype.itemsize

    def bind_input(self, binding: Any, name: str, rows: int, start: int = 0) -> None:
        shape = [rows, *self.shape[1:]]
        binding.bind_input(name, self.where, 0, self.dtype, shape, self.ptr(start))

    def bind_output(self, binding: Any, name: str, rows: int, start: int = 0) -> None:
        shape = [rows, *self.shape[1:]]
        binding.bind_output(name, self.where, 0, self.dtype, shape, self.ptr(start))


def cache_tensors(names: Sequence[str], kind: str) -> list[str]:
    """The per-layer cache tensors of ``kind`` among a graph's input and output ``names``,
    checked to be the contract's ``cache_names``."""
    layers = sum(1 for n in names if n.startswith(f"{kind}_k."))
    expected = cache_names(layers, kind)
    if not layers or not set(expected) <= set(names):
        raise ValueError(
            f"the graph's {kind} caches are not {expected or kind + '_k.0, ...'} "
            f"(it has {list(names)})"
        )
    return expected


def io_names(session: Any) -> list[str]:
    return [t.name for t in (*session.get_inputs(), *session.get_outputs())]


class Ops:
    """The device copies a cache needs: small sessions on the cache's device, each moving every
    layer's keys and values in one run."""

    def __init__(self, where: str, dtype: np.dtype, config: RuntimeConfig):
        self.where = where
        self._elem = _ELEM[np.dtype(dtype)]
        self._plain = RuntimeConfig(provider=config.provider, intra_op_threads=1)
        self._sessions: dict[tuple[str, int], Any] = {}

    def _session(self, kind: str, count: int) -> Any:
        key = (kind, count)
        if key not in self._sessions:
            build = {"copy": copy_graph, "resize": resize_graph, "prefix": prefix_graph}
            build["zeros"] = zeros_graph
            model = build[kind](self._elem, count).SerializeToString()
            self._sessions[key] = session(model, self._plain)
        return self._sessions[key]

    def copy(self, moves: list[tuple[Buffer, int, Buffer, int]], rows: int = 1) -> None:
        """For each ``(src, src_row, dst, dst_row)``: ``rows`` rows of ``src`` to ``dst``."""
        run = self._session("copy", len(moves))
        binding = run.io_binding()
        for i, (src, src_row, dst, dst_row) in enumerate(moves):
            count = rows * src.row_elems
            binding.bind_input(f"x.{i}", self.where, 0, src.dtype, [count], src.ptr(src_row))
            binding.bind_output(f"y.{i}", self.where, 0, dst.dtype, [count], dst.ptr(dst_row))
        run.run_with_iobinding(binding)

    def resize(self, sources: list[Buffer], targets: list[Buffer], rows: int) -> None:
        """Rows ``[0, rows)`` of each source into its target, the slot axis cut or padded."""
        run = self._session("resize", len(sources))
        binding = run.io_binding()
        for i, (src, dst) in enumerate(zip(sources, targets, strict=True)):
            src.bind_input(binding, f"x.{i}", rows)
            dst.bind_output(binding, f"y.{i}", rows)
        binding.bind_cpu_input("length", np.array([targets[0].shape[2]], np.int64))
        run.run_with_iobinding(binding)

    def write_prefix(self, caches: list[Buffer], start: int, count: int, kvs: list[Any]) -> None:
        """Each ``kvs[i]`` (an OrtValue ``[count, H, P, D]``) at slots ``[0, P)`` of rows
        ``[start, start + count)`` of ``caches[i]``, in place."""
        run = self._session("prefix", len(caches))
        binding = run.io_binding()
        for i, (cache, kv) in enumerate(zip(caches, kvs, strict=True)):
            cache.bind_input(binding, f"cache.{i}", count, start)
            binding.bind_ortvalue_input(f"kv.{i}", kv)
            cache.bind_output(binding, f"y.{i}", count, start)
        run.run_with_iobinding(binding)

    def zero(self, buffers: list[Buffer]) -> None:
        """Fill buffers of one shape with zeros."""
        run = self._session("zeros", len(buffers))
        binding = run.io_binding()
        binding.bind_cpu_input("shape", np.array(buffers[0].shape, np.int64))
        for i, buffer in enumerate(buffers):
            buffer.bind_output(binding, f"y.{i}", buffer.shape[0])
        run.run_with_iobinding(binding)
