"""The passes: each turns a model file into a candidate (a model file plus how to run it).

Lossless: ORT offline graph optimization; transformer fusion (BERT-like models). Lossy, with
precision recovery: dynamic int8 (CPU), fp16 with fp32 IO (GPU). Runtime variants: CUDA graphs per
shape bucket (GPU), TensorRT through ORT's TensorRT EP (where TensorRT 10 imports).

Passes only build; the optimizer verifies every candidate against the fp32 CPU reference and times
it. Recovery helpers here rank the lossy nodes by how much error each adds, using the reference
and candidate outputs of every such node on a few examples.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ._model import ModelInfo
from ._runtime import RuntimeConfig

__all__ = [
    "Candidate",
    "build_fp16",
    "build_fusion",
    "build_int8",
    "build_ort_graph",
    "int8_sensitivity",
    "quantizable_nodes",
]

log = logging.getLogger("blade.passes")

# Ops whose weights dynamic quantization turns into int8 (MatMul with a constant B, Gemm, and the
# fused Attention of the transformer optimizer).
_INT8_OPS = ("MatMul", "Attention", "Gemm")


@dataclass
class Candidate:
    """A model file and how to run it.

    Attributes:
        name: the pass and its variant, e.g. ``int8-dynamic`` or ``fp16+cuda-graph``.
        tier: ``lossless``, ``fp16`` or ``int8``: which accuracy gate applies.
        model_path: the candidate's model.
        runtime: how to run it.
        notes: what the pass did (fused ops, nodes kept in fp32, ...), for the report.
    """

    name: str
    tier: str
    model_path: Path
    runtime: RuntimeConfig
    notes: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def _quiet() -> Any:
    """The ORT helpers print and log progress and advice; keep it out of our output (what a pass
    did goes into the report)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                try:
                    yield
                finally:
                    # ORT's helpers leave TemporaryDirectory objects to the garbage collector
                    gc.collect()
    finally:
        logging.disable(previous)


def build_ort_graph(source: Path, out: Path, runtime: RuntimeConfig, device: str) -> Candidate:
    """ORT's own graph optimizations (constant folding, redundant node removal, fusions of the
    extended level), run once offline and saved."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(out)
    opts.log_severity_level = 3
    providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    ort.InferenceSession(str(source), sess_options=opts, providers=providers)
    before = len(onnx.load(str(source), load_external_data=False).graph.node)
    after = len(onnx.load(str(out), load_external_data=False).graph.node)
    return Candidate("ort-graph", "lossless", out, runtime, {"nodes": f"{before} -> {after}"})


def _fusion_options(model: ModelInfo) -> Any:
    from onnxruntime.transformers.fusion_options import FusionOptions

    opts = FusionOptions("bert")
    opts.enable_gelu_approximation = False  # lossless tier: no numeric approximations
    if model.mask_input is not None:
        opts.use_raw_attention_mask(True)  # arbitrary (also left) padding stays correct
    return opts


def _scalar(graph: onnx.GraphProto, name: str) -> float | None:
    """The value of a scalar constant (initializer or Constant node), else None."""
    for init in graph.initializer:
        if init.name == name:
            array = onnx.numpy_helper.to_array(init)
            return float(array.reshape(-1)[0]) if array.size == 1 else None
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    array = onnx.numpy_helper.to_array(attr.t)
                    return float(array.reshape(-1)[0]) if array.size == 1 else None
    return None


def divide_attention_scale(graph: onnx.GraphProto) -> int:
    """Rewrite ``Softmax(Add(Mul(MatMul(q, k), c), mask))`` as ``Div(MatMul(q, k), 1 / c)``.

    Exporters scale attention scores with a Mul; the mask term is a Mul too, and ORT's attention
    fusion, which takes the first Mul parent of the Add for the mask, then fails on every layer.
    A Div by the reciprocal is the form it matches (``1 / c`` is exact for power-of-two head sizes;
    otherwise within one float rounding, which the lossless gate checks). Returns the rewrites.
    """
    producer = {out: node for node in graph.node for out in node.output}
    rewritten = 0
    for softmax in [n for n in graph.node if n.op_type == "Softmax"]:
        add = producer.get(softmax.input[0])
        if add is None or add.op_type != "Add":
            continue
        for name in add.input:
            mul = producer.get(name)
            if mul is None or mul.op_type != "Mul":
                continue
            matmul = producer.get(mul.input[0])
            scale = _scalar(graph, mul.input[1])
            if matmul is None or matmul.op_type != "MatMul" or not scale:
                continue
            reciprocal = f"{mul.name or mul.output[0]}/reciprocal"
            graph.initializer.append(
                onnx.numpy_helper.from_array(np.array(1.0 / scale, dtype=np.float32), reciprocal)
            )
            mul.op_type = "Div"
            mul.input[1] = reciprocal
            rewritten += 1
            break
    return rewritten


def build_fusion(
    model: ModelInfo, source: Path, out: Path, runtime: RuntimeConfig, device: str
) -> Candidate:
    """onnxruntime.transformers fusions (Attention, EmbedLayerNorm, SkipLayerNorm, BiasGelu) with
    the heads and hidden size detected from the graph."""
    from onnxruntime.transformers.optimizer import optimize_model

    proto = onnx.load(str(source))
    rescaled = divide_attention_scale(proto.graph)
    if rescaled:
        source = out.with_name(out.stem + ".prefusion.onnx")
        onnx.save(proto, str(source))
    failure = None
    with _quiet():
        try:
            fused = optimize_model(
                str(source),
                model_type="bert",
                num_heads=model.num_heads,
                hidden_size=model.hidden_size if model.num_heads else 0,
                optimization_options=_fusion_options(model),
                opt_level=0,
                use_gpu=device == "cuda",
            )
        except Exception as exc:  # its pattern matchers assert; keep the message, drop the frames
            failure = f"{type(exc).__name__}: {exc}".rstrip(": ")
    if failure is not None:
        raise ValueError(f"transformer fusion does not apply: {failure}")
    stats = {k: v for k, v in fused.get_fused_operator_statistics().items() if v}
    if not stats:
        raise ValueError("no transformer pattern matched: nothing to fuse")
    fused.save_model_to_file(str(out))
    notes = {"fused": stats, "num_heads": model.num_heads, "hidden_size": model.hidden_size}
    if rescaled:
        notes["attention_scale_to_div"] = rescaled
    return Candidate("transformer-fusion", "lossless", out, runtime, notes)


def quantizable_nodes(path: Path) -> list[onnx.NodeProto]:
    """Nodes dynamic quantization would turn into int8 (constant weights only)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    return [
        n
        for n in graph.node
        if n.op_type in _INT8_OPS and len(n.input) > 1 and n.input[1] in weights
    ]


def build_int8(
    source: Path,
    out: Path,
    runtime: RuntimeConfig,
    exclude: Sequence[str] = (),
    reduce_range: bool = False,
) -> Candidate:
    """Dynamic int8: weights int8 per channel, activations quantized at run time; ``exclude``
    nodes stay fp32 (precision recovery). After fusion, the default tensor type must be given so
    that the quantizer can type the fused contrib ops' outputs."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(
            str(source),
            str(out),
            op_types_to_quantize=list(_INT8_OPS),
            per_channel=True,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(exclude),
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True},
        )
    name = "int8-dynamic" if not exclude else f"int8-dynamic, {len(exclude)} kept fp32"
    return Candidate(
        name, "int8", out, runtime, {"kept_fp32": list(exclude), "reduce_range": reduce_range}
    )


def _with_outputs(path: Path, names: Sequence[str], out: Path) -> Path:
    """A copy of the model that also outputs the given (fp32) intermediate tensors."""
    model = onnx.load(str(path))
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
    onnx.save(model, str(out))
    return out


def int8_sensitivity(
    fp32_model: Path, int8_model: Path, feed: Mapping[str, np.ndarray], workdir: Path
) -> list[tuple[str, float]]:
    """Rank the quantized nodes by the error each adds: 1 - cosine of its output against the fp32
    model's, minus the same for its input (so error inherited from upstream does not count).
    Worst first."""
    import onnxruntime as ort

    nodes = quantizable_nodes(fp32_model)
    tensors = sorted({t for n in nodes for t in (n.input[0], n.output[0])})
    graph_inputs = set(feed)
    probe = [t for t in tensors if t not in graph_inputs]
    outputs: list[dict[str, np.ndarray]] = []
    for path, tag in ((fp32_model, "ref"), (int8_model, "q")):
        probed = _with_outputs(path, probe, workdir / f"probe-{tag}.onnx")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(
            str(probed), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        names = [o.name for o in session.get_outputs()]
        values = dict(zip(names, session.run(names, dict(feed)), strict=True))
        values.update(feed)
        outputs.append(values)
    ref, got = outputs

    def err(t: str) -> float:
        a, b = ref[t].astype(np.float64).ravel(), got[t].astype(np.float64).ravel()
        denom = np.linalg.norm(a) * np.linalg.norm(b)
        return 0.0 if denom == 0 else float(1.0 - np.dot(a, b) / denom)

    ranked = [(n.name, err(n.output[0]) - err(n.input[0])) for n in nodes]
    return sorted(ranked, key=lambda x: x[1], reverse=True)


def build_fp16(
    model: ModelInfo, source: Path, out: Path, runtime: RuntimeConfig, block_ops: Sequence[str] = ()
) -> Candidate:
    """fp16 weights and compute with fp32 inputs and outputs (GPU), from the fused model when
    there is one; ``block_ops`` op types stay fp32 (precision recovery)."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    onnx_model = OnnxModel(onnx.load(str(source)))
    with _quiet():
        onnx_model.convert_float_to_float16(
            keep_io_types=True, op_block_list=list(block_ops) or None
        )
    onnx_model.save_model_to_file(str(out))
    name = "fp16" if not block_ops else f"fp16, {'+'.join(block_ops)} kept fp32"
    return Candidate(name, "fp16", out, runtime, {"kept_fp32_ops": list(block_ops), "io": "fp32"})
