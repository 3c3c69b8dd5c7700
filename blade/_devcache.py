"""Key/value caches that stay on the device: the encoder writes its output there, the decoder step
reads and updates the caches there through IO binding, and per ``(rows, cache length)`` bucket
the step can replay a CUDA graph. What crosses to the host per step: the tokens and positions
(8 bytes a row each way) and the logits the scheduler chooses from.

Buffers, one per layer and key/value (``where`` is ``cuda``, or ``cpu`` where the same code runs
on the CPU EP for tests), rows first:

- ``cross``: ``[capacity, H, F, D]`` each; a row is copied in from the encoder's output buffers
  when its request is admitted;
- ``self[S]``: ``[capacity, H, S, D]`` each, for every cache bucket ``S`` used so far, kept for the
  cache's lifetime (a captured graph replays on the addresses it was captured with) and zeroed
  when allocated (the graph masks stale slots but needs them finite); a bucket change copies the
  running rows into the other bucket's buffers (``resize_graph``);
- tokens ``[capacity, 1]``, positions ``[capacity]``, and the logits ``[R, 1, V]`` of each graph.

The running rows ``[0, n)`` are a prefix of each buffer, so a step binds ``n`` rows (or the row
bucket ``R >= n`` of a graph: rows ``[n, R)`` get token 0 at position 0, and what the graph
computes for them is never read: a row's caches are written again when a request is admitted to
it) by address, without a copy. The step graph (``with_cache_update``) writes the new keys and
values into ``self[S]`` in place: each ``updated(self_k.l)`` output is bound to its input's
buffer. The prefill runs the prompt over an empty cache (no graph) and writes its keys/values at
slots ``[0, P)`` in place (``prefix_graph``).

Threads: one thread uses a cache at a time (the engine's); every device call is made under
blade's process-wide ``_CaptureLock`` (shared), and a thread's first run of a graph id (its
capture) alone, as ``BladeRuntime`` does.
"""

from __future__ import annotations

import itertools
import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from ._cachegraph import updated, with_cache_update
from ._devops import NUMPY, Buffer, Guard, Ops, cache_tensors, io_names, onnxruntime, session
from ._runtime import _NO_GRAPH, RuntimeConfig, _run_options

__all__ = ["DeviceCache", "DeviceDecoder", "DeviceEncoder", "Encoded"]


@dataclass(frozen=True)
class Encoded:
    """An encoder batch's output on the device: rows ``[0, rows)`` of one buffer per cross-
    attention key/value (``cache_names(L, "cross")`` order)."""

    buffers: tuple[Buffer, ...]
    rows: int


class DeviceEncoder:
    """The encoder with its output left on the device (``Encoded``); one CUDA graph per batch
    bucket of ``config.buckets`` when ``config.cuda_graph`` (a batch is padded up to its
    bucket; larger ones run without a graph)."""

    def __init__(self, path: str, config: RuntimeConfig, where: str, *, spinning: bool = False):
        self.where = where
        graphs = where == "cuda" and config.cuda_graph and bool(config.buckets)
        self.session = session(path, config, graphs=graphs, spinning=spinning)
        self._guard = Guard(config.provider != "cpu")
        self._plain = _run_options(_NO_GRAPH) if graphs else None
        self.names = cache_tensors(io_names(self.session), "cross")
        features = self.session.get_inputs()[0]
        outputs = {o.name: o for o in self.session.get_outputs()}
        self._input_tail = tuple(int(d) for d in features.shape[1:])
        self._output_tail = tuple(int(d) for d in outputs[self.names[0]].shape[1:])
        self.dtype = NUMPY[outputs[self.names[0]].type]
        self._buckets = sorted({int(b[0]) for b in config.buckets}) if graphs else []
        self._graphs: dict[int, tuple[Buffer, tuple[Buffer, ...], Any, Any, int]] = {}
        self._staging: tuple[Buffer, ...] = ()

    def _outputs(self, rows: int) -> tuple[Buffer, ...]:
        return tuple(Buffer(self.where, (rows, *self._output_tail), self.dtype) for _ in self.names)

    def _graph(self, batch: int) -> tuple[Buffer, tuple[Buffer, ...], Any, Any, int]:
        graph = self._graphs.get(batch)
        if graph is None:
            inputs = Buffer(self.where, (batch, *self._input_tail), np.dtype(np.float32))
            outputs = self._outputs(batch)
            binding = self.session.io_binding()
            inputs.bind_input(binding, "input_features", batch)
            for name, buffer in zip(self.names, outputs, strict=True):
                buffer.bind_output(binding, name, batch)
            graph_id = self._buckets.index(batch) + 1
            graph = (inputs, outputs, binding, _run_options(graph_id), graph_id)
            self._graphs[batch] = graph
        return graph

    def encode(self, features: np.ndarray) -> Encoded:
        rows = int(features.shape[0])
        bucket = next((b for b in self._buckets if b >= rows), None)
        if bucket is not None:
            inputs, outputs, binding, options, graph_id = self._graph(bucket)
            padded = np.zeros((bucket, *self._input_tail), np.float32)
            padded[:rows] = features
            with self._guard.run(graph_id):
                inputs.value.update_inplace(padded)
                self.session.run_with_iobinding(binding, options)
            return Encoded(outputs, rows)
        if not self._staging or self._staging[0].shape[0] < rows:
            self._staging = self._outputs(rows)
        binding = self.session.io_binding()
        with self._guard.shared():
            value = onnxruntime().OrtValue.ortvalue_from_numpy(
                np.ascontiguousarray(features, np.float32), self.where, 0
            )
            binding.bind_ortvalue_input("input_features", value)
            for name, buffer in zip(self.names, self._staging, strict=True):
                buffer.bind_output(binding, name, rows)
            self.session.run_with_iobinding(binding, self._plain)
        return Encoded(self._staging, rows)


class DeviceDecoder:
    """The decoder step with its cache write in the graph (``with_cache_update``), run over a
    ``DeviceCache``'s buffers; CUDA graphs for the ``(rows, cache length)`` buckets of
    ``config.buckets`` when ``config.cuda_graph``."""

    def __init__(self, path: str, config: RuntimeConfig, where: str, *, spinning: bool = False):
        self.where = where
        self.graphs = where == "cuda" and config.cuda_graph and bool(config.buckets)
        source = onnx.load(path)
        names = [v.name for v in (*source.graph.input, *source.graph.output)]
        self.self_names = cache_tensors(names, "self")
        self.cross_names = cache_tensors(names, "cross")
        self.new_names = cache_tensors(names, "new")
        model = with_cache_update(source, self.self_names, self.new_names).SerializeToString()
        del source
        self.session = session(model, config, graphs=self.graphs, spinning=spinning)
        self.guard = Guard(config.provider != "cpu")
        self.plain = _run_options(_NO_GRAPH) if self.graphs else None
        types = {i.name: i.type for i in self.session.get_inputs()}
        self.dtype = NUMPY[types[self.self_names[0]]]
        self.vocab = int(self.session.get_outputs()[0].shape[-1])
        self.buckets = {(int(r), int(s)) for r, s in config.buckets} if self.graphs else set()
        self._ids = itertools.count(1)  # graph ids of this session: every cache takes its own
        self._config = config
        self._lock = threading.Lock()

    def graph_id(self) -> int:
        with self._lock:
            return next(self._ids)

    def ops(self) -> Ops:
        return Ops(self.where, self.dtype, self._config)


@dataclass
class _StepGraph:
    rows: int
    binding: Any
    options: Any
    graph_id: int
    logits: Buffer


class DeviceCache:
    """``Cache`` over device buffers (see the module docstring)."""

    def __init__(self, decoder: DeviceDecoder, capacity: int, sizes: tuple[int, ...]):
        self._decoder = decoder
        self._session = decoder.session
        self._ops = decoder.ops()
        self._guard = decoder.guard
        self.capacity = capacity
        self.sizes = sizes
        self._where = decoder.where
        self.cross: tuple[Buffer, ...] = ()
        self._selfs: dict[int, tuple[Buffer, ...]] = {}
        self.length = sizes[0]
        """The self-attention bucket the running rows are in."""
        self._tokens = Buffer(self._where, (capacity, 1), np.dtype(np.int64))
        self._positions = Buffer(self._where, (capacity,), np.dtype(np.int64))
        self._tokens_host = np.zeros((capacity, 1), np.int64)
        self._positions_host = np.zeros(capacity, np.int64)
        self._kv: tuple[Buffer, ...] = ()  # a step's new keys/values: bound, never read
        self._steps: dict[tuple[int, int], _StepGraph] = {}
        self._rows = sorted({r for r, _ in decoder.buckets if r <= capacity})

    # ---------------------------------------------------------------------- buffers

    def _self(self, length: int) -> tuple[Buffer, ...]:
        """The self caches of bucket ``length``, zeroed when new (stale slots are masked, and
        must be finite)."""
        buffers = self._selfs.get(length)
        if buffers is None:
            _, heads, _, dim = self.cross[0].shape
            shape = (self.capacity, heads, length, dim)
            buffers = tuple(Buffer(self._where, shape, self.cross[0].dtype) for _ in self.cross)
            with self._guard.shared():
                self._ops.zero(list(buffers))
            self._selfs[length] = buffers
        return buffers

    def put_cross(self, row: int, encoded: Any, index: int) -> None:
        if not isinstance(encoded, Encoded):
            raise TypeError(
                f"a device cache takes the device encoder's output, got {type(encoded).__name__}"
            )
        if not self.cross:
            self.cross = tuple(
                Buffer(self._where, (self.capacity, *b.shape[1:]), b.dtype) for b in encoded.buffers
            )
            with self._guard.shared():
                self._ops.zero(list(self.cross))
            _, heads, _, dim = self.cross[0].shape
            shape = (self.capacity, heads, 1, dim)
            self._kv = tuple(Buffer(self._where, shape, self.cross[0].dtype) for _ in self.cross)
            self._self(self.length)
        moves = [
            (src, index, dst, row) for src, dst in zip(encoded.buffers, self.cross, strict=True)
        ]
        with self._guard.shared():
            self._ops.copy(moves)

    def fit(self, n: int, need: int) -> None:
        assert self.cross, "fit() before any row was admitted"
        size = next(b for b in self.sizes if b >= need)
        current = self.length
        if size == current or (size < current and need > size // 2 + 1):
            return  # shrink only when well inside the smaller bucket (as HostCache)
        target = self._self(size)
        if n:
            with self._guard.shared():
                self._ops.resize(list(self._selfs[current]), list(target), n)
        self.length = size

    # ------------------------------------------------------------------------ steps

    def prefill(self, start: int, count: int, prompt: np.ndarray) -> np.ndarray:
        assert self.cross
        ort = onnxruntime()
        caches = self._selfs[self.length]
        _, heads, _, dim = caches[0].shape
        decoder = self._decoder
        binding = self._session.io_binding()
        with self._guard.shared():
            tokens = np.ascontiguousarray(prompt, np.int64)
            binding.bind_ortvalue_input(
                "tokens", ort.OrtValue.ortvalue_from_numpy(tokens, self._where, 0)
            )
            positions = np.zeros(count, np.int64)
            binding.bind_ortvalue_input(
                "positions", ort.OrtValue.ortvalue_from_numpy(positions, self._where, 0)
            )
            empty = [count, heads, 0, dim]
            for name in decoder.self_names:
                value = ort.OrtValue.ortvalue_from_shape_and_type(
                    empty, caches[0].dtype, self._where, 0
                )
                binding.bind_ortvalue_input(name, value)
            for name, buffer in zip(decoder.cross_names, self.cross, strict=True):
                buffer.bind_input(binding, name, count, start)
            binding.bind_output("logits", self._where)
            for name in (*decoder.new_names, *map(updated, decoder.self_names)):
                binding.bind_output(name, self._where)
            self._session.run_with_iobinding(binding, decoder.plain)
            outputs = binding.get_outputs()
            new = outputs[1 : 1 + len(decoder.new_names)]
            self._ops.write_prefix(list(caches), start, count, list(new))
            logits = outputs[0].numpy()
        return np.ascontiguousarray(logits[:, -1, :])

    def _bind_step(self, binding: Any, rows: int, logits: Buffer | None) -> None:
        decoder = self._decoder
        caches = self._selfs[self.length]
        if logits is None:  # first: get_outputs() lists outputs in the order they were bound
            binding.bind_output("logits", self._where)
        else:
            logits.bind_output(binding, "logits", rows)
        self._tokens.bind_input(binding, "tokens", rows)
        self._positions.bind_input(binding, "positions", rows)
        for name, buffer in zip(decoder.self_names, caches, strict=True):
            buffer.bind_input(binding, name, rows)
            buffer.bind_output(binding, updated(name), rows)  # the same buffer: in place
        for name, buffer in zip(decoder.cross_names, self.cross, strict=True):
            buffer.bind_input(binding, name, rows)
        for name, buffer in zip(decoder.new_names, self._kv, strict=True):
            buffer.bind_output(binding, name, rows)

    def _graph(self, n: int) -> _StepGraph | None:
        rows = next((r for r in self._rows if r >= n), None)
        key = (rows or 0, self.length)
        if rows is None or key not in self._decoder.buckets:
            return None
        graph = self._steps.get(key)
        if graph is None:
            logits = Buffer(self._where, (rows, 1, self._decoder.vocab), np.dtype(np.float32))
            binding = self._session.io_binding()
            self._bind_step(binding, rows, logits)
            graph_id = self._decoder.graph_id()
            graph = _StepGraph(rows, binding, _run_options(graph_id), graph_id, logits)
            self._steps[key] = graph
        return graph

    def step(self, n: int, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        assert self.cross
        self._tokens_host[:n, 0] = tokens
        self._tokens_host[n:] = 0
        self._positions_host[:n] = positions
        self._positions_host[n:] = 0
        graph = self._graph(n)
        if graph is not None:
            with self._guard.run(graph.graph_id):
                self._tokens.value.update_inplace(self._tokens_host)
                self._positions.value.update_inplace(self._positions_host)
                self._session.run_with_iobinding(graph.binding, graph.options)
                logits = graph.logits.value.numpy()
            return np.ascontiguousarray(logits[:n, 0, :])
        binding = self._session.io_binding()
        self._bind_step(binding, n, None)
        with self._guard.shared():
            self._tokens.value.update_inplace(self._tokens_host)
            self._positions.value.update_inplace(self._positions_host)
            self._session.run_with_iobinding(binding, self._decoder.plain)
            logits = binding.get_outputs()[0].numpy()
        return np.ascontiguousarray(logits[:, 0, :])

    # ------------------------------------------------------------------------- rows

    def move(self, src: int, dst: int) -> None:
        assert self.cross
        buffers = (*self.cross, *self._selfs[self.length])
        with self._guard.shared():
            self._ops.copy([(b, src, b, dst) for b in buffers])

    def reorder(self, rows: np.ndarray, sources: np.ndarray) -> None:
        moved = [(int(r), int(s)) for r, s in zip(rows, sources, strict=True) if r != s]
        if not moved:
            return
        caches = self._selfs[self.length]
        spares = [Buffer(self._where, (len(moved), *b.shape[1:]), b.dtype) for b in caches]
        with self._guard.shared():  # all sources read before any row is written
            self._ops.copy(
                [
                    (b, s, spare, i)
                    for i, (_, s) in enumerate(moved)
                    for b, spare in zip(caches, spares, strict=True)
                ]
            )
            self._ops.copy(
                [
                    (spare, i, b, r)
                    for i, (r, _) in enumerate(moved)
                    for b, spare in zip(caches, spares, strict=True)
                ]
            )

    def nbytes(self) -> int:
        """Device memory held by this cache's buffers."""
        buffers = [*self.cross, *self._kv, self._tokens, self._positions]
        buffers += [b for group in self._selfs.values() for b in group]
        buffers += [g.logits for g in self._steps.values()]
        return sum(math.prod(b.shape) * b.dtype.itemsize for b in buffers)
