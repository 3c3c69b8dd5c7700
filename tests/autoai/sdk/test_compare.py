"""Shadow output comparison: the numbers, and the edge cases that must read as disagreement."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from autoai.sdk._compare import Comparison, compare_outputs

LOGITS = np.array([[2.0, 1.0], [0.5, 3.0], [1.0, -1.0], [0.0, 4.0]], dtype=np.float32)


def test_identical_outputs_agree_fully():
    result = compare_outputs({"logits": LOGITS}, {"logits": LOGITS.copy()})
    assert result == Comparison(1.0, 0.0, 1.0, ("logits",), None)


def test_close_outputs_in_other_dtypes_compare_in_float64():
    shadow = LOGITS.astype(np.float16) + np.float16(0.25)
    result = compare_outputs({"logits": LOGITS}, {"logits": shadow})
    assert result.cosine is not None and 0.98 < result.cosine < 1.0
    assert result.max_abs == pytest.approx(0.25, abs=1e-3)
    assert result.top1_agreement == 1.0 and result.reason is None


def test_top1_agreement_is_the_fraction_of_rows_with_the_same_argmax():
    shadow = LOGITS.copy()
    shadow[1] = [3.0, 0.5]  # row 1 flips
    result = compare_outputs({"logits": LOGITS}, {"logits": shadow})
    assert result.top1_agreement == 0.75
    rows = compare_outputs({"x": np.zeros((2, 3, 4))}, {"x": np.zeros((2, 3, 4))})
    assert rows.top1_agreement == 1.0  # 6 rows of the last axis


def test_rank_one_outputs_have_no_top1():
    result = compare_outputs({"score": np.array([0.1, 0.9])}, {"score": np.array([0.1, 0.9])})
    assert result.top1_agreement is None and result.cosine == 1.0


def test_cosine_is_the_minimum_over_outputs_and_max_abs_the_maximum():
    big = np.linspace(1.0, 2.0, 10_000)
    primary = {"embedding": big, "head": np.array([[1.0, -1.0]])}
    shadow = {"embedding": big.copy(), "head": np.array([[-1.0, 1.0]])}
    result = compare_outputs(primary, shadow)
    assert result.cosine == pytest.approx(-1.0)  # a mean would have said ~1.0
    assert result.max_abs == 2.0
    assert result.top1_agreement == 0.0
    assert result.outputs_compared == ("embedding", "head")


def test_only_outputs_present_on_both_sides_are_compared():
    result = compare_outputs(
        {"logits": LOGITS, "only_primary": np.ones(3)},
        {"only_shadow": np.ones(3), "logits": LOGITS},
    )
    assert result.outputs_compared == ("logits",) and result.cosine == 1.0


def test_no_output_in_common_is_disagreement():
    result = compare_outputs({"a": np.ones(2)}, {"b": np.ones(2)})
    assert (result.cosine, result.max_abs, result.outputs_compared) == (0.0, math.inf, ())
    assert result.reason == "no output in common: primary ['a'], shadow ['b']"


def test_mismatched_shapes_are_disagreement_with_a_reason():
    result = compare_outputs({"logits": LOGITS}, {"logits": LOGITS[:3]})
    assert (result.cosine, result.top1_agreement, result.max_abs) == (0.0, 0.0, math.inf)
    assert result.reason == "output 'logits': shape [4, 2] vs [3, 2]"


@pytest.mark.parametrize(
    ("a", "b", "cosine"),
    [([0.0, 0.0], [0.0, 0.0], 1.0), ([0.0, 0.0], [0.0, 1e-30], 0.0), ([1.0, 0.0], [0.0, 0.0], 0.0)],
    ids=["both zero", "primary zero", "shadow zero"],
)
def test_zero_vectors(a: list[float], b: list[float], cosine: float) -> None:
    result = compare_outputs({"x": np.array(a)}, {"x": np.array(b)})
    assert result.cosine == cosine and result.reason is None


def test_nan_is_disagreement_and_its_rows_never_agree():
    shadow = LOGITS.astype(np.float64)
    shadow[2, 0] = np.nan
    result = compare_outputs({"logits": LOGITS}, {"logits": shadow})
    assert (result.cosine, result.max_abs) == (0.0, math.inf)
    assert result.top1_agreement == 0.75
    assert result.reason == "output 'logits': NaN"
    both = compare_outputs({"x": np.array([np.nan])}, {"x": np.array([np.nan])})
    assert both.cosine == 0.0  # NaN on both sides is not agreement either


def test_equal_infinities_are_equal_values_and_lone_ones_disagree():
    masked = np.array([[-np.inf, 1.0, 2.0], [0.5, -np.inf, 0.1]])
    result = compare_outputs({"x": masked}, {"x": masked * 1.0})
    assert (result.cosine, result.max_abs, result.top1_agreement) == (1.0, 0.0, 1.0)
    lone = masked.copy()
    lone[0, 0] = -1e9
    result = compare_outputs({"x": masked}, {"x": lone})
    assert (result.cosine, result.max_abs) == (0.0, math.inf)
    assert result.reason == "output 'x': infinities differ"
    flipped = compare_outputs({"x": np.array([np.inf])}, {"x": np.array([-np.inf])})
    assert flipped.cosine == 0.0


def test_huge_magnitudes_do_not_overflow():
    x = np.array([1e300, -1e300, 1e299])
    assert compare_outputs({"x": x}, {"x": x.copy()}).cosine == 1.0


def test_empty_outputs_agree():
    result = compare_outputs({"x": np.zeros((0, 2))}, {"x": np.zeros((0, 2))})
    assert (result.cosine, result.max_abs, result.top1_agreement) == (1.0, 0.0, None)


finite = hnp.arrays(
    np.float64,
    hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5),
    # Not near the bottom of the float range: there, scaling by 0.1-10 underflows to zero or
    # loses bits, which changes the direction of the vector and is not what is under test.
    elements=st.floats(-1e6, 1e6).filter(lambda v: v == 0.0 or abs(v) > 1e-300),
)


@given(finite, st.floats(0.1, 10))
@settings(max_examples=200, deadline=None)
def test_cosine_is_bounded_symmetric_and_scale_free(x: np.ndarray, scale: float) -> None:
    y = np.roll(x, 1)
    forward = compare_outputs({"x": x}, {"x": y})
    backward = compare_outputs({"x": y}, {"x": x})
    assert forward.cosine is not None and backward.cosine is not None
    assert -1.0 <= forward.cosine <= 1.0
    assert forward.cosine == pytest.approx(backward.cosine, abs=1e-12)
    assert forward.max_abs == backward.max_abs
    assert compare_outputs({"x": x}, {"x": y * scale}).cosine == pytest.approx(
        forward.cosine, abs=1e-9
    )
    same = compare_outputs({"x": x}, {"x": x.copy()})
    assert same.cosine == pytest.approx(1.0) and same.max_abs == 0.0
