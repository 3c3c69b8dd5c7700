"""Running an ONNX model the way an artifact says: provider, threads, and on GPU fp32 IO with
IO binding and one CUDA graph per shape bucket (inputs padded up to the bucket, outputs cut back).

The optimizer times and verifies every candidate through this class, and the blade processor
serves the chosen one through it, so what was measured is what is served.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ._errors import RuntimeNotAvailable

__all__ = ["BladeRuntime", "RuntimeConfig"]

log = logging.getLogger("blade.runtime")

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
        self.session = ort.InferenceSession(
            self.model_path, sess_options=opts, providers=self._providers
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._graphs: dict[tuple[int, int], _GraphSession] = {}
        if config.cuda_graph and config.provider == "cuda":
            for batch, seq in sorted(config.buckets):
                self._graphs[(batch, seq)] = _GraphSession(self, batch, seq)

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
        results = self.session.run(names, dict(feed))
        return dict(zip(names, results, strict=True))

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
    """One captured CUDA graph: a session bound to device buffers of one bucket's shape."""

    def __init__(self, runtime: BladeRuntime, batch: int, seq: int, device: str = "cuda"):
        ort = _ort()
        self.runtime = runtime
        self.batch, self.seq = batch, seq
        providers: list[Any] = ["CPUExecutionProvider"]  # tests: the same binding, no graph
        if device == "cuda":
            providers = [("CUDAExecutionProvider", {"device_id": 0, "enable_cuda_graph": "1"})]
        self.session = ort.InferenceSession(
            runtime.model_path, sess_options=runtime._opts, providers=providers
        )
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
        # output shapes of this bucket, from one ordinary run on a plain session
        plain = runtime.session.run(runtime.output_names, sample)
        self.binding = self.session.io_binding()
        self.inputs = {n: ort.OrtValue.ortvalue_from_numpy(a, device, 0) for n, a in sample.items()}
        self.outputs = {
            n: ort.OrtValue.ortvalue_from_shape_and_type(list(o.shape), o.dtype, device, 0)
            for n, o in zip(runtime.output_names, plain, strict=True)
        }
        for name, value in self.inputs.items():
            self.binding.bind_ortvalue_input(name, value)
        for name, value in self.outputs.items():
            self.binding.bind_ortvalue_output(name, value)
        self.session.run_with_iobinding(self.binding)  # warm-up, then capture
        self.session.run_with_iobinding(self.binding)

    def run(
        self, feed: Mapping[str, np.ndarray], wanted: frozenset[str] | None = None
    ) -> dict[str, np.ndarray]:
        cfg = self.runtime.config
        rows = next(iter(feed.values())).shape[0]
        length = 0
        for name, value in self.inputs.items():
            arr = feed[name]
            axis_value = cfg.pad_inputs.get(name)
            if axis_value is not None:
                length = arr.shape[axis_value[0]]
            full = np.full(self.shapes[name], axis_value[1] if axis_value else 0, dtype=arr.dtype)
            full[tuple(slice(0, s) for s in arr.shape)] = arr
            value.update_inplace(full)
        self.session.run_with_iobinding(self.binding)
        out: dict[str, np.ndarray] = {}
        for name, value in self.outputs.items():
            if wanted is not None and name not in wanted:
                continue  # a device-to-host copy saved (per-token outputs are large)
            arr = value.numpy()[:rows]
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
