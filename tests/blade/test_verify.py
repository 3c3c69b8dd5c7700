"""Accuracy metrics and gates (pure)."""

from __future__ import annotations

import numpy as np
import pytest

from blade import GATES
from blade._verify import check, compare, gate_for


def test_identical_outputs_are_perfect() -> None:
    ref = {"emb": np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)}
    m = compare(ref, {"emb": ref["emb"].copy()})["emb"]
    assert m.max_abs == 0 and m.rel_l2 == 0 and m.cosine == pytest.approx(1.0) and m.nan_inf == 0
    assert m.top1 is None  # not a classifier output
    assert check(compare(ref, ref), GATES["lossless"]) == (True, "passed")


def test_cosine_is_the_worst_example_and_rel_l2_is_global() -> None:
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((3, 16))
    got = ref.copy()
    got[2] = -ref[2]  # one example flipped
    m = compare({"y": ref}, {"y": got})["y"]
    assert m.cosine == pytest.approx(-1.0)
    assert m.rel_l2 == pytest.approx(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    ok, reason = check({"y": m}, GATES["int8"])
    assert not ok and "cosine" in reason


def test_new_nan_or_inf_fails_every_gate() -> None:
    ref = {"y": np.ones((2, 3), np.float32)}
    got = {"y": np.array([[1, np.nan, 1], [1, 1, np.inf]], np.float32)}
    m = compare(ref, got)["y"]
    assert m.nan_inf == 2
    for gate in GATES.values():
        ok, reason = check({"y": m}, gate)
        assert not ok and "NaN/Inf" in reason


def test_top1_agreement_for_classifier_outputs() -> None:
    ref = np.array([[0.1, 0.9], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7]])
    got = ref.copy()
    got[0] = [0.9, 0.1]
    m = compare({"logits": ref}, {"logits": got})["logits"]
    assert m.top1 == 0.75
    ok, reason = check({"logits": m}, gate_for("fp16", {"cosine": -1.0}))
    assert not ok and "top-1" in reason


def test_shape_mismatch_never_passes() -> None:
    m = compare({"y": np.zeros((2, 3))}, {"y": np.zeros((2, 4))})["y"]
    assert not check({"y": m}, gate_for("int8", 0.0))[0]


def test_tolerance_overrides() -> None:
    assert gate_for("int8", 0.95).cosine_min == 0.95
    assert gate_for("lossless", 0.95) == GATES["lossless"]  # a float relaxes lossy tiers only
    g = gate_for("lossless", {"rel_l2": 1e-3})
    assert g.rel_l2_max == 1e-3
    assert gate_for("fp16", {"top1": 0.9}).top1_min == 0.9
