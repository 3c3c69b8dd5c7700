"""Inputs drawn from a signature, given ones converted and checked (pure)."""

from __future__ import annotations

import numpy as np
import pytest

from autoai.bench import DYNAMIC_DIM, BadInput, draw_inputs, signature_from_metadata
from autoai.bench._inputs import check, describe, given_inputs
from autoai.sdk import Signature, TensorSpec

BERT = Signature(
    (
        TensorSpec("input_ids", "INT64", (-1, -1)),
        TensorSpec("attention_mask", "INT64", (-1, -1)),
        TensorSpec("pixel", "FP16", (-1, 3, -1)),
        TensorSpec("flag", "BOOL", (-1,)),
        TensorSpec("text", "BYTES", (-1, 1)),
    )
)


def test_drawn_inputs_follow_the_signature() -> None:
    arrays = draw_inputs(BERT, 4)
    assert {n: a.shape for n, a in arrays.items()} == {
        "input_ids": (4, DYNAMIC_DIM),
        "attention_mask": (4, DYNAMIC_DIM),
        "pixel": (4, 3, DYNAMIC_DIM),
        "flag": (4,),
        "text": (4, 1),
    }
    assert arrays["input_ids"].dtype == np.int64 and (arrays["input_ids"] == 1).all()
    assert arrays["pixel"].dtype == np.float16 and arrays["pixel"].std() > 0.5
    assert arrays["flag"].all() and arrays["text"][0, 0] == b"autoai-bench"
    check(BERT, arrays, "bert")  # what is drawn passes the SDK's own check
    assert describe(arrays)[2] == {"name": "pixel", "datatype": "FP16", "shape": [4, 3, 8]}
    again = draw_inputs(BERT, 4)
    assert np.array_equal(again["pixel"], arrays["pixel"])  # seeded


def test_a_model_without_a_batch_dim_keeps_its_shape_and_refuses_batch() -> None:
    fixed = Signature((TensorSpec("x", "FP32", (2, 4)),))
    assert draw_inputs(fixed, 1)["x"].shape == (2, 4)
    with pytest.raises(BadInput, match="no batch dim"):
        draw_inputs(fixed, 8)


def test_nothing_to_draw_from() -> None:
    with pytest.raises(BadInput, match="pass --input"):
        draw_inputs(Signature(), 1)
    with pytest.raises(BadInput, match=">= 1"):
        draw_inputs(BERT, 0)


def test_metadata_of_the_server() -> None:
    doc = {
        "name": "m",
        "versions": ["1"],
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
    }
    signature = signature_from_metadata(doc, "m")
    assert signature.inputs == (TensorSpec("x", "FP32", (-1, 4)),)
    with pytest.raises(BadInput, match="malformed input"):
        signature_from_metadata({"inputs": [{"name": "x"}]}, "m")
    with pytest.raises(BadInput, match="not a JSON object"):
        signature_from_metadata([], "m")


def test_given_values_take_the_inputs_datatype_and_are_checked() -> None:
    signature = Signature((TensorSpec("x", "FP32", (-1, 4)),))
    arrays = given_inputs(signature, {"x": [[1, 2, 3, 4]]})
    assert arrays["x"].dtype == np.float32
    with pytest.raises(BadInput, match="rectangular"):
        given_inputs(signature, {"x": [[1, 2], [3]]})
    with pytest.raises(BadInput, match=r"dim 1 is 2"):
        check(signature, given_inputs(signature, {"x": [[1, 2]]}), "m")
    with pytest.raises(BadInput, match="unknown input 'z'"):
        check(signature, {**arrays, "z": np.ones(1)}, "m")
