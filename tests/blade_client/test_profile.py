"""BladeProfile: the pure plan of split, pass-through and fallback, and output reassembly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

from blade_client import BladeProfile, InvalidProfile, merge_outputs


def _inputs(rows: int, seq: int) -> dict[str, np.ndarray]:
    ids = np.arange(rows * seq, dtype=np.int64).reshape(rows, seq)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def test_within_the_profile_is_one_part() -> None:
    profile = BladeProfile.from_meta({"profiles": {"batch": [1, 8], "seq": [1, 128]}})
    plan = profile.plan(_inputs(8, 128))
    assert plan.fallback is None
    assert len(plan.parts) == 1


@given(rows=st.integers(1, 100), hi=st.integers(1, 16))
def test_a_large_batch_is_split_in_order_and_merged_back(rows: int, hi: int) -> None:
    profile = BladeProfile(batch=(1, hi))
    inputs = _inputs(rows, 3)
    plan = profile.plan(inputs)
    assert plan.fallback is None
    assert all(p["input_ids"].shape[0] <= hi for p in plan.parts)
    assert len(plan.parts) == -(-rows // hi)
    merged = merge_outputs([{"y": p["input_ids"] * 2} for p in plan.parts])
    np.testing.assert_array_equal(merged["y"], inputs["input_ids"] * 2)


def test_a_sequence_outside_the_profile_falls_back_and_says_why() -> None:
    profile = BladeProfile(batch=(1, 32), seq=(1, 16))
    plan = profile.plan(_inputs(2, 17))
    assert plan.fallback is not None
    assert "sequence length 17" in plan.fallback
    assert "[1, 16]" in plan.fallback


def test_a_batch_below_the_minimum_falls_back() -> None:
    plan = BladeProfile(batch=(4, 32)).plan(_inputs(2, 8))
    assert plan.fallback is not None and "below" in plan.fallback


def test_a_split_whose_last_chunk_is_below_the_minimum_falls_back() -> None:
    plan = BladeProfile(batch=(4, 8)).plan(_inputs(10, 8))
    assert plan.fallback is not None and "last chunk" in plan.fallback


def test_no_profile_means_no_limit() -> None:
    plan = BladeProfile.from_meta(None).plan(_inputs(1000, 4096))
    assert plan.fallback is None and len(plan.parts) == 1
    assert BladeProfile.from_meta({"profiles": {"batch": None, "seq": None}}) == BladeProfile()


@pytest.mark.parametrize(
    ("profiles", "message"),
    [
        ({"batch": [1]}, "expected [min, max]"),
        ({"batch": "1-8"}, "expected [min, max]"),
        ({"seq": [0, 8]}, "1 <= min <= max"),
        ({"seq": [9, 8]}, "1 <= min <= max"),
        ({"batch": [1.0, 8]}, "expected [min, max]"),
        ([1, 2], "expected an object"),
    ],
)
def test_malformed_profiles_are_refused(profiles: object, message: str) -> None:
    with pytest.raises(InvalidProfile, match=message.replace("[", r"\[").replace("]", r"\]")):
        BladeProfile.from_meta({"profiles": profiles})
