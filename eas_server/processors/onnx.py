"""Processor ``onnx``: plain ONNX Runtime, CPU (or CUDA when ``onnxruntime-gpu`` is installed).

One InferenceSession per worker, each with its own thread pool; ``run`` releases the GIL, so
workers run concurrently with the event loop. Requests of different lengths share a batch when
padding is declared (``padding=``) or, with ``auto``, when the probe at load finds it safe
(``_padding``).
"""

from __future__ import annotations

import codecs
import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._cpu import usable_cores
from .._errors import InvalidInput, ModelLoadError, ProcessorError
from ..batching import Padding
from ._base import Processor, TensorSpec
from ._padding import ModelTensor, PaddingChoice, decide

__all__ = ["OnnxProcessor", "not_onnx", "ort_datatype", "session_options"]

log = logging.getLogger("eas_server.onnx")

_ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


_SNIFF_BYTES = 512


def _looks_like(head: bytes) -> str | None:
    """What a file that is not ONNX seems to be, from its first bytes (None: no idea)."""
    if not head:
        return "the file is empty"
    if head.startswith(b"PK\x03\x04"):
        return "it is a zip archive (a PyTorch checkpoint?)"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "it is a Python pickle (a PyTorch or scikit-learn checkpoint?)"
    if head.startswith(b"\x89HDF"):
        return "it is an HDF5 file (a Keras model?)"
    try:  # a character cut at the end of ``head`` is not a reason to doubt it is text
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return None
    if text.strip() and all(c.isprintable() or c in "\t\r\n" for c in text):
        return f"it is text, starting {text.strip().splitlines()[0][:40]!r}"
    return None


def not_onnx(path: str | os.PathLike[str], head: bytes, reason: str) -> str:
    """The one line that says a file is not an ONNX model, and what was expected.

    Args:
        path: the file, as the message names it.
        head: its first bytes (a few hundred are plenty), to say what it looks like instead.
        reason: the parser's complaint, used when the bytes tell nothing (``its bytes do not
            parse as ONNX protobuf``).
    """
    return (
        f"{path} is not an ONNX model (expected an ONNX ModelProto file, e.g. exported with "
        f"torch.onnx.export): {_looks_like(head[:_SNIFF_BYTES]) or reason}"
    )


def _head(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(_SNIFF_BYTES)
    except OSError:
        return b"\x00"  # unreadable: nothing to tell from its bytes


def _load_error(path: str, exc: Exception) -> str:
    """The message of a session that did not load: ``not_onnx`` when the file is no model."""
    text = str(exc)
    if type(exc).__name__ == "InvalidProtobuf" or "INVALID_PROTOBUF" in text:
        return not_onnx(path, _head(path), "its bytes do not parse as ONNX protobuf")
    if "No graph was found" in text:
        return not_onnx(path, _head(path), "it holds no graph")
    return f"cannot load {path}: {text}"


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ModelLoadError(
            "the onnx processor needs onnxruntime: pip install 'autoai[server]'"
        ) from exc
    return onnxruntime


def ort_datatype(ort_type: str) -> str:
    """OIP datatype of an ONNX Runtime type string; ``ModelLoadError`` for unsupported ones."""
    try:
        return _ORT_TYPES[ort_type]
    except KeyError:
        raise ModelLoadError(f"unsupported tensor type {ort_type}") from None


def session_options(intra_op_threads: int, spinning: bool = True) -> Any:
    """Options every session here uses: all graph optimizations, a fixed intra-op pool, and
    spinning as asked (ORT's default is on)."""
    ort = _ort()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.log_severity_level = 3
    return opts


def _is_dynamic(dim: object) -> bool:
    return not isinstance(dim, int) or dim < 0


class OnnxProcessor(Processor):
    """Serve an ONNX model file with ONNX Runtime."""

    kind = "onnx"
    platform = "onnxruntime_onnx"
    backend = "onnxruntime"

    def __init__(
        self,
        model_path: str,
        *,
        workers: int = 1,
        intra_op_threads: int | None = None,
        spinning: bool = False,
        providers: list[str] | None = None,
        padding: PaddingChoice = "auto",
    ):
        super().__init__(
            model_path, workers=workers, intra_op_threads=intra_op_threads, spinning=spinning
        )
        self._providers = providers
        self._sessions: list[Any] = []
        self._inputs: list[TensorSpec] = []
        self._outputs: list[TensorSpec] = []
        self._batchable = False
        self._output_names: list[str] = []
        self._string_inputs: set[str] = set()
        self._string_outputs: set[str] = set()
        self._padding_choice = padding
        self._padding: Padding | None = None
        self.padding_reason = ""
        """Why ``padding`` is what it is (declared, probed, off), as logged at load."""

    def load(self) -> None:
        ort = _ort()
        if not os.path.isfile(self.model_path):
            raise ModelLoadError(f"model file {self.model_path} does not exist")
        providers = self._providers
        if providers is None:
            available = ort.get_available_providers()
            providers = [
                p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available
            ]
        if "CUDAExecutionProvider" in providers and hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # CUDA/cuDNN libraries from the NVIDIA or torch wheels
        threads = self.intra_op_threads or max(1, usable_cores() // self.workers)
        try:
            self._sessions = [
                ort.InferenceSession(
                    self.model_path,
                    sess_options=session_options(threads, self.spinning),
                    providers=providers,
                )
                for _ in range(self.workers)
            ]
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise ModelLoadError(_load_error(self.model_path, exc)) from exc
        session = self._sessions[0]
        ins, outs = session.get_inputs(), session.get_outputs()
        self._batchable = all(_is_dynamic(t.shape[0]) if t.shape else False for t in [*ins, *outs])
        self._inputs = [self._spec(t) for t in ins]
        self._outputs = [self._spec(t) for t in outs]
        self._output_names = [t.name for t in outs]
        self._string_inputs = {s.name for s in self._inputs if s.datatype == "BYTES"}
        self._string_outputs = {s.name for s in self._outputs if s.datatype == "BYTES"}
        log.info(
            "loaded %s with %s (%d workers x %d threads)",
            self.model_path,
            providers[0],
            self.workers,
            threads,
        )
        self._padding, self.padding_reason = decide(
            self._padding_choice,
            [ModelTensor(t.name, ort_datatype(t.type), tuple(t.shape or ())) for t in ins],
            [ModelTensor(t.name, ort_datatype(t.type), tuple(t.shape or ())) for t in outs],
            lambda feed: self.run(feed, 0),
            self._batchable,
        )
        log.info("%s: %s", self.model_path, self.padding_reason)

    def _spec(self, arg: Any) -> TensorSpec:
        dims = [d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or [])]
        if self._batchable:
            dims = dims[1:]
        return TensorSpec(arg.name, ort_datatype(arg.type), tuple(dims))

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._outputs

    @property
    def batchable(self) -> bool:
        return self._batchable

    @property
    def padding(self) -> Padding | None:
        """Declared (``padding=`` a declaration), probed at load (``auto``) or None (``off``)."""
        return self._padding

    @property
    def device(self) -> str:
        providers = self._sessions[0].get_providers() if self._sessions else []
        return "gpu" if providers and providers[0] == "CUDAExecutionProvider" else "cpu"

    def run(
        self, inputs: dict[str, np.ndarray], worker: int, outputs: frozenset[str] | None = None
    ) -> Mapping[str, np.ndarray]:
        feed = inputs
        if self._string_inputs:
            feed = dict(inputs)
            for name in self._string_inputs:
                feed[name] = _to_str(inputs[name], name)
        try:
            names = (
                self._output_names
                if outputs is None
                else [n for n in self._output_names if n in outputs]
            )
            results = self._sessions[worker].run(names, feed)
        except Exception as exc:
            kind = type(exc).__name__
            if kind in ("InvalidArgument", "InvalidGraph") or "INVALID_ARGUMENT" in str(exc):
                raise InvalidInput(f"the model rejected the input: {exc}") from exc
            raise ProcessorError(f"{kind}: {exc}") from exc
        out = dict(zip(names, results, strict=True))
        for name in self._string_outputs & out.keys():
            out[name] = np.vectorize(
                lambda s: s.encode("utf-8") if isinstance(s, str) else s, otypes=[object]
            )(out[name])
        return out

    def close(self) -> None:
        self._sessions = []


def _to_str(arr: np.ndarray, name: str) -> np.ndarray:
    try:
        return np.vectorize(  # type: ignore[no-any-return]
            lambda b: b.decode("utf-8") if isinstance(b, bytes) else str(b), otypes=[object]
        )(arr)
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"input {name!r}: BYTES element is not UTF-8, which this model needs"
        ) from exc
