"""Graph rewrites of the fusion pass: the attention scale as a Div, so ORT's fusion can match."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from blade._passes import divide_attention_scale
from tests.fixtures import onnx_models


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in session.run(None, feed)]


def test_the_attention_scale_becomes_a_division_with_the_same_outputs(tmp_path: Path) -> None:
    path = onnx_models.tiny_bert(tmp_path, hidden=32, layers=3)
    model = onnx.load(str(path))
    before = [n.op_type for n in model.graph.node]
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 100, (2, 16)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 10:] = 0
    feed = {"input_ids": ids, "attention_mask": mask}
    expected = _run(model, feed)

    assert divide_attention_scale(model.graph) == 3  # one per layer
    after = [n.op_type for n in model.graph.node]
    assert after.count("Div") == before.count("Div") + 3
    assert after.count("Mul") == before.count("Mul") - 3
    onnx.checker.check_model(model, full_check=True)
    for got, want in zip(_run(model, feed), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert divide_attention_scale(model.graph) == 0  # nothing left to rewrite


def test_graphs_without_a_scaled_attention_are_left_alone(tmp_path: Path) -> None:
    model = onnx.load(str(onnx_models.classifier(tmp_path)))  # a Softmax, but over a MatMul + Add
    nodes = [n.SerializeToString() for n in model.graph.node]
    assert divide_attention_scale(model.graph) == 0
    assert [n.SerializeToString() for n in model.graph.node] == nodes
