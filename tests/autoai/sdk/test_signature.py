"""Input checks against a model's signature: what passes, and a message for every problem."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import numpy as np
import pytest

from autoai.sdk._errors import InvalidInput, ModelClientError
from autoai.sdk._routes import Signature, TensorSpec
from autoai.sdk._signature import check_inputs

SIGNATURE = Signature(
    inputs=(
        TensorSpec("input_ids", "INT64", (-1, -1)),
        TensorSpec("pixels", "FP32", (-1, 3, 4)),
    ),
    outputs=(TensorSpec("logits", "FP32", (-1, 2)),),
)


def _good() -> dict[str, Any]:
    return {
        "input_ids": np.zeros((2, 7), dtype=np.int64),
        "pixels": np.zeros((2, 3, 4), dtype=np.float32),
    }


def _problems(inputs: Any, signature: Signature = SIGNATURE) -> tuple[str, ...]:
    with pytest.raises(InvalidInput) as info:
        check_inputs(signature, inputs)
    assert str(info.value) == "invalid inputs: " + "; ".join(info.value.problems)
    return info.value.problems


def test_matching_inputs_pass_whatever_the_dynamic_sizes():
    check_inputs(SIGNATURE, _good())
    check_inputs(
        SIGNATURE,
        MappingProxyType(
            {
                "pixels": np.ones((0, 3, 4), dtype=np.float32),
                "input_ids": np.ones((1, 512), dtype=">i8"),  # any byte order of INT64
            }
        ),
    )


@pytest.mark.parametrize(
    "array",
    [np.array([b"a", b"bc"], dtype=object), np.array([b"a", b"bc"]), np.array(["a", "bc"])],
    ids=["object", "bytes_", "str_"],
)
def test_bytes_inputs_accept_every_bytes_like_dtype(array: np.ndarray) -> None:
    check_inputs(Signature(inputs=(TensorSpec("text", "BYTES", (-1,)),)), {"text": array})


def test_a_signature_without_inputs_checks_nothing():
    anything: dict[str, Any] = {"anything": [1, 2]}
    check_inputs(Signature(), anything)
    check_inputs(Signature(outputs=SIGNATURE.outputs), {})


def test_datatype_mismatch():
    inputs = _good()
    inputs["input_ids"] = inputs["input_ids"].astype(np.float32)
    assert _problems(inputs) == ("input 'input_ids': datatype FP32, expected INT64",)


def test_missing_input():
    inputs = _good()
    del inputs["pixels"]
    assert _problems(inputs) == ("input 'pixels': missing (expected FP32 [-1, 3, 4])",)


def test_unknown_input_lists_the_expected_names():
    inputs = _good()
    inputs["attention_mask"] = np.ones((2, 7), dtype=np.int64)
    assert _problems(inputs) == ("unknown input 'attention_mask' (expected: input_ids, pixels)",)


def test_rank_mismatch():
    inputs = _good()
    inputs["input_ids"] = np.zeros(7, dtype=np.int64)
    assert _problems(inputs) == (
        "input 'input_ids': rank 1 (shape [7]), expected rank 2 (shape [-1, -1])",
    )


def test_fixed_dim_mismatch():
    inputs = _good()
    inputs["pixels"] = np.zeros((2, 3, 5), dtype=np.float32)
    assert _problems(inputs) == (
        "input 'pixels': dim 2 is 5 (shape [2, 3, 5]), expected 4 (shape [-1, 3, 4])",
    )


def test_not_an_array_and_no_oip_datatype():
    problems = _problems({"input_ids": [[1, 2]], "pixels": np.zeros((2, 3, 4), dtype=np.complex64)})
    assert problems == (
        "input 'input_ids': expected a numpy array, got list",
        "input 'pixels': numpy dtype complex64 has no OIP datatype, expected FP32",
    )


def test_every_problem_is_reported_at_once():
    inputs: dict[str, Any] = {
        "input_ids": np.zeros((2, 7), dtype=np.int32),
        "extra": np.zeros(1),
        "other": 1,
    }
    with pytest.raises(InvalidInput) as info:
        check_inputs(SIGNATURE, inputs)
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, ModelClientError)
    assert err.problems == (
        "input 'input_ids': datatype INT32, expected INT64",
        "input 'pixels': missing (expected FP32 [-1, 3, 4])",
        "unknown input 'extra' (expected: input_ids, pixels)",
        "unknown input 'other' (expected: input_ids, pixels)",
    )


def test_invalid_input_names_the_model_when_given():
    err = InvalidInput(["input 'x': missing (expected FP32 [-1])"], model="intent-cls")
    assert (
        str(err) == "invalid inputs for model 'intent-cls': input 'x': missing (expected FP32 [-1])"
    )


def test_a_tensor_spec_derives_its_dtype_and_fixed_dims():
    spec = TensorSpec("pixels", "FP32", (-1, 3, 4))
    assert spec.dtype == np.dtype("<f4") and spec.fixed_dims == ((1, 3), (2, 4))
    assert spec == TensorSpec("pixels", "FP32", (-1, 3, 4))
    assert "dtype" in vars(spec)  # derived at construction, not on the first call
    with pytest.raises(ValueError, match="unknown datatype 'BF16'"):
        TensorSpec("x", "BF16", (1,))
    assert TensorSpec(name="x", datatype="FP32", shape=[2]) == TensorSpec("x", "FP32", (2,))


def test_array_subclasses_and_none_take_the_slow_path():
    inputs: dict[str, Any] = _good()
    inputs["input_ids"] = np.ma.masked_array(inputs["input_ids"])
    check_inputs(SIGNATURE, inputs)
    inputs["pixels"] = None
    assert _problems(inputs) == ("input 'pixels': expected a numpy array, got NoneType",)
