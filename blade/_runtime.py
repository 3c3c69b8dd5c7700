"""Running an ONNX model the way an artifact says: provider, threads, and on GPU fp32 IO with
IO binding and one CUDA graph per shape bucket (inputs padded up to the bucket, outputs cut back).

The buckets share the runtime's one ONNX Runtime session: it is created with the CUDA EP's
``enable_cuda_graph`` and each bucket captures its own graph under the run option
``gpu_graph_id`` (1, 2, ...; ONNX Runtime >= 1.18), with its own IO binding of device buffers,
since a graph replays on the addresses it was captured with. Runs outside every bucket go to the
same session with ``gpu_graph_id`` -1 (no capture, no replay). So a worker holds the weights once,
not once per bucket plus once for the plain runs.

The optimizer times and verifies every candidate through this class, and the blade processor
serves the chosen one through it, so what was measured is what is served.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ._errors import RuntimeNotAvailable

__all__ = ["BladeRuntime", "RuntimeConfig"]

log = logging.getLogger("blade.runtime")

_GRAPH_ID_KEY = "gpu_graph_id"
"""ONNX Runtime's run option that names the CUDA graph a run captures or replays."""
_NO_GRAPH = -1
"""Its value for a run that neither captures nor replays (any shape, numpy feeds)."""
_GRAPH_IDS_SINCE = (1, 18)
"""The first ONNX Runtime release that keeps one graph per ``gpu_graph_id``; older ones ignore
the option and would replay the first bucket's graph for every bucket."""

_LEVELS = {
    "disabled": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


@dataclass
class RuntimeConfig:
    """How to run a model (stored in the artifact's ``blade.json``).

    Attributes:
        provider: ``cpu``, ``cuda`` or ``tensorrt``.
        graph_level: ORT graph optimization level when the session is created.
        intra_op_threads: ORT intra-op threads (None: all cores).
        cuda_graph: capture one CUDA graph per bucket and replay it (GPU).
        buckets: ``[batch, seq]`` shapes to capture; a request is padded to the smallest bucket
            that holds it, and runs without a graph when none does.
        pad_inputs: input -> ``[axis, value]`` where padding is safe (axis 0 is the batch).
        pad_outputs: output -> axis that follows the padded sequence axis, to cut back.
        trt_options: extra TensorRT EP options.
    """

    provider: str = "cpu"
    graph_level: str = "all"
    intra_op_threads: int | None = None
    cuda_graph: bool = False
    buckets: list[list[int]] = field(default_factory=list)
    pad_inputs: dict[str, list[int]] = field(default_factory=dict)
    pad_outputs: dict[str, int] = field(default_factory=dict)
    trt_options: dict[str, Any] = field(default_factory=dict)
    trim_mask: str | None = None
    """When set (the attention-mask input), trailing positions that are padding in every row are
    cut off before running and the per-token outputs padded back with zeros: right-padded
    batches cost what their longest real row costs. Real positions keep their position ids."""

    def json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> RuntimeConfig:
        return cls(**{k: v for k, v in doc.items() if k in cls.__dataclass_fields__})


def _ort() -> Any:
    import onnxruntime as ort

    return ort


def _providers(config: RuntimeConfig) -> list[Any]:
    ort = _ort()
    available = ort.get_available_providers()
    cuda = ("CUDAExecutionProvider", {"device_id": 0})
    if config.provider == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA/cuDNN libraries from the NVIDIA or torch wheels
    if "CUDAExecutionProvider" not in available:
        raise RuntimeNotAvailable(
            "this artifact needs the CUDA execution provider: pip install 'autoai[gpu]' "
            f"(onnxruntime-gpu); available here: {available}"
        )
    if config.provider == "cuda":
        return [cuda, "CPUExecutionProvider"]
    if "TensorrtExecutionProvider" not in available:
        raise RuntimeNotAvailable(
            "this artifact needs the TensorRT execution provider (TensorRT 10 libraries)"
        )
    return [("TensorrtExecutionProvider", dict(config.trt_options)), cuda, "CPUExecutionProvider"]


class _CaptureLock:
    """Process-wide: a CUDA graph capture runs alone, other GPU work of blade runtimes shares.

    ONNX Runtime captures in ``cudaStreamCaptureModeGlobal``: while one thread captures, a
    synchronizing call of any other thread (a copy, a stream sync, an allocation) fails with
    "operation not permitted when stream is capturing" and invalidates the capture. ORT keeps
    graphs per thread, so a worker thread captures on its first run of each bucket, under the
    traffic of the other models of the process. Writers first: a waiting capture stops new runs.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running = 0
        self._capturing = False
        self._waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._capturing or self._waiting:
                self._cond.wait()
            self._running += 1
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    @contextmanager
    def alone(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._capturing or self._running:
                self._cond.wait()
            self._waiting -= 1
            self._capturing = True
        try:
            yield
        finally:
            with self._cond:
                self._capturing = False
                self._cond.notify_all()


_CAPTURE = _CaptureLock()


def _graph_ids_supported(version: str) -> bool:
    """Whether ONNX Runtime ``version`` (``1.31.1``, ``1.20.0.dev20240501``) captures one CUDA
    graph per ``gpu_graph_id``."""
    match = re.match(r"(\d+)\.(\d+)", version)
    return match is not None and (int(match[1]), int(match[2])) >= _GRAPH_IDS_SINCE


def _with_cuda_graph(providers: list[Any]) -> list[Any]:
    """``providers`` with ``enable_cuda_graph`` on the CUDA EP's options."""
    out: list[Any] = []
    for entry in providers:
        if isinstance(entry, tuple) and entry[0] == "CUDAExecutionProvider":
            entry = (entry[0], {**entry[1], "enable_cuda_graph": "1"})
        out.append(entry)
    return out


def _run_options(graph_id: int) -> Any:
    """Run options that select CUDA graph ``graph_id`` (:data:`_NO_GRAPH`: none)."""
    options = _ort().RunOptions()
    options.add_run_config_entry(_GRAPH_ID_KEY, str(graph_id))
    return options


class BladeRuntime:
    """A loaded model, runnable from one thread at a time (one per serving worker)."""

    def __init__(
        self, model_path: str | os.PathLike[str], config: RuntimeConfig, *, spinning: bool = False
    ):
        ort = _ort()
        self.config = config
        self.model_path = str(model_path)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, _LEVELS[config.graph_level]
        )
        opts.intra_op_num_threads = config.intra_op_threads or (os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self._opts = opts
        self._providers = _providers(config)
        graphs = config.cuda_graph and config.provider == "cuda" and bool(config.buckets)
        if graphs:
            if not _graph_ids_supported(ort.__version__):
                raise RuntimeNotAvailable(
                    "CUDA graphs for several shape buckets need onnxruntime-gpu >= "
                    f"{'.'.join(map(str, _GRAPH_IDS_SINCE))} (the gpu_graph_id run option); "
                    f"found {ort.__version__}: pip install -U 'autoai[gpu]'"
                )
            self._providers = _with_cuda_graph(self._providers)
        self._gpu = config.provider != "cpu"
        with self._shared():  # its allocations must not fall into another model's capture
            self.session = ort.InferenceSession(
                self.model_path, sess_options=opts, providers=self._providers
            )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        # On a graph-enabled session a run without gpu_graph_id is graph 0: ORT would capture it
        # from transient numpy feeds and replay it for every later run. -1 keeps plain runs plain.
        self._plain_options: Any = _run_options(_NO_GRAPH) if graphs else None
        self._graphs: dict[tuple[int, int], _GraphSession] = {}
        self._captured = threading.local()
        """Per thread: the graph ids this thread has run (ORT keeps captured graphs per thread)."""
        if graphs:
            self._add_buckets("cuda")

    def _shared(self) -> Any:
        """GPU work that captures nothing: it must not overlap a capture (``_CaptureLock``)."""
        return _CAPTURE.shared() if self._gpu else nullcontext()

    def _guard(self, graph_id: int) -> Any:
        """The lock a run of ``graph_id`` needs: alone on this thread's first run (a capture)."""
        if not self._gpu:
            return nullcontext()
        seen: set[int] | None = getattr(self._captured, "ids", None)
        if seen is None:
            seen = self._captured.ids = set()
        if graph_id in seen:
            return self._shared()
        seen.add(graph_id)
        return _CAPTURE.alone()

    def _add_buckets(self, device: str) -> None:
        """Bind and (on ``cuda``) capture one graph per configured bucket, smallest first, on
        this runtime's session; ``cpu`` binds the same way without a graph (the tests' seam)."""
        shapes = sorted({(int(b), int(s)) for b, s in self.config.buckets})
        for graph_id, (batch, seq) in enumerate(shapes, start=1):  # 0 is ORT's default id
            self._graphs[(batch, seq)] = _GraphSession(self, batch, seq, device, graph_id=graph_id)

    def _plain_run(self, names: list[str], feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        with self._shared():
            results: list[np.ndarray] = self.session.run(names, dict(feed), self._plain_options)
        return results

    def run(
        self, feed: Mapping[str, np.ndarray], outputs: frozenset[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Outputs for ``feed`` (numpy in, numpy out, fp32 IO); only ``outputs`` when given."""
        mask_name = self.config.trim_mask
        if mask_name is not None and mask_name in feed and feed[mask_name].ndim == 2:
            mask = feed[mask_name]
            seq = mask.shape[1]
            used = np.flatnonzero(mask.any(axis=0))
            length = int(used[-1]) + 1 if used.size else 1
            if length < seq:
                trimmed = {
                    k: v[:, :length] if k in self.config.pad_inputs else v for k, v in feed.items()
                }
                return self._pad_back(self._run(trimmed, outputs), seq)
        return self._run(feed, outputs)

    def _run(
        self, feed: Mapping[str, np.ndarray], wanted: frozenset[str] | None
    ) -> dict[str, np.ndarray]:
        graph = self._bucket(feed) if self._graphs else None
        if graph is not None:
            return graph.run(feed, wanted)
        names = (
            self.output_names if wanted is None else [n for n in self.output_names if n in wanted]
        )
        return dict(zip(names, self._plain_run(names, feed), strict=True))

    def _pad_back(self, outputs: dict[str, np.ndarray], seq: int) -> dict[str, np.ndarray]:
        for name, axis in self.config.pad_outputs.items():
            arr = outputs.get(name)
            if arr is not None and arr.shape[axis] < seq:
                widths = [(0, 0)] * arr.ndim
                widths[axis] = (0, seq - arr.shape[axis])
                outputs[name] = np.pad(arr, widths)
        return outputs

    def _bucket(self, feed: Mapping[str, np.ndarray]) -> _GraphSession | None:
        first = next(iter(feed.values()))
        rows = first.shape[0]
        seq = max(
            (feed[n].shape[a] for n, (a, _) in self.config.pad_inputs.items() if n in feed),
            default=0,
        )
        for (batch, length), graph in self._graphs.items():
            if rows <= batch and seq <= length:
                return graph
        return None


class _GraphSession:
    """One bucket: device buffers of its shape bound to the runtime's session, and on CUDA the
    graph captured for them under its own ``gpu_graph_id``."""

    def __init__(
        self,
        runtime: BladeRuntime,
        batch: int,
        seq: int,
        device: str = "cuda",
        *,
        graph_id: int = 1,
    ):
        ort = _ort()
        self.runtime = runtime
        self.batch, self.seq = batch, seq
        self.graph_id = graph_id
        self.session = runtime.session
        # tests: device "cpu" is the same binding on a CPU session, no graph
        self.run_options: Any = _run_options(graph_id) if device == "cuda" else None
        self.shapes: dict[str, tuple[int, ...]] = {}
        sample: dict[str, np.ndarray] = {}
        for arg in self.session.get_inputs():
            shape = [
                batch if i == 0 else seq if not isinstance(d, int) or d < 0 else d
                for i, d in enumerate(arg.shape)
            ]
            dtype = _numpy_dtype(arg.type)
            sample[arg.name] = (
                np.ones(shape, dtype=dtype) if "mask" in arg.name else np.zeros(shape, dtype=dtype)
            )
            self.shapes[arg.name] = tuple(shape)
        # output shapes of this bucket, from one plain run (no graph)
        plain = runtime._plain_run(runtime.output_names, sample)
        self.binding = self.session.io_binding()
        with runtime._shared():
            self.inputs = {
                n: ort.OrtValue.ortvalue_from_numpy(a, device, 0) for n, a in sample.items()
            }
            self.outputs = {
                n: ort.OrtValue.ortvalue_from_shape_and_type(list(o.shape), o.dtype, device, 0)
                for n, o in zip(runtime.output_names, plain, strict=True)
            }
        for name, value in self.inputs.items():
            self.binding.bind_ortvalue_input(name, value)
        for name, value in self.outputs.items():
            self.binding.bind_ortvalue_output(name, value)
        # ORT repeats the first run until the graph is captured (alone: _CaptureLock); the
        # second replays it, so a graph that cannot replay fails here, at load.
        for _ in range(2):
            with runtime._guard(graph_id):
                self.session.run_with_iobinding(self.binding, self.run_options)

    def run(
        self, feed: Mapping[str, np.ndarray], wanted: frozenset[str] | None = None
    ) -> dict[str, np.ndarray]:
        cfg = self.runtime.config
        rows = next(iter(feed.values())).shape[0]
        length = 0
        padded: dict[str, np.ndarray] = {}
        for name in self.inputs:
            arr = feed[name]
            axis_value = cfg.pad_inputs.get(name)
            if axis_value is not None:
                length = arr.shape[axis_value[0]]
            full = np.full(self.shapes[name], axis_value[1] if axis_value else 0, dtype=arr.dtype)
            full[tuple(slice(0, s) for s in arr.shape)] = arr
            padded[name] = full
        # copies in and out are synchronizing calls too: inside the lock with the run
        with self.runtime._guard(self.graph_id):
            for name, value in self.inputs.items():
                value.update_inplace(padded[name])
            self.session.run_with_iobinding(self.binding, self.run_options)
            # only the wanted outputs: a device-to-host copy saved (per-token outputs are large)
            got = {
                name: value.numpy()
                for name, value in self.outputs.items()
                if wanted is None or name in wanted
            }
        out: dict[str, np.ndarray] = {}
        for name, full_out in got.items():
            arr = full_out[:rows]
            axis = cfg.pad_outputs.get(name)
            if axis is not None and length:
                index = [slice(None)] * arr.ndim
                index[axis] = slice(0, length)
                arr = arr[tuple(index)]
            out[name] = np.ascontiguousarray(arr)
        return out


def _numpy_dtype(ort_type: str) -> np.dtype:
    table = {
        "tensor(float)": np.float32,
        "tensor(float16)": np.float16,
        "tensor(double)": np.float64,
        "tensor(int64)": np.int64,
        "tensor(int32)": np.int32,
        "tensor(int8)": np.int8,
        "tensor(uint8)": np.uint8,
        "tensor(bool)": np.bool_,
    }
    return np.dtype(table[ort_type])
