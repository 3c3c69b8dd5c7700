"""The artifact writer from a plain record: what ``optimize`` hands it is all it needs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from blade import load_artifact
from blade._artifact import Outcome, build_report, from_cache, write
from blade._hardware import detect_hardware
from blade._model import inspect_model
from blade._runtime import BladeRuntime, RuntimeConfig
from blade._verify import GATES, compare
from tests.fixtures import onnx_models


def _outcome(model_path: Path, key: str) -> Outcome:
    """Plain ORT kept for the classifier: the record ``optimize`` would build for that run."""
    model = inspect_model(model_path)
    data = {"x": np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32)}
    plain = RuntimeConfig(provider="cpu")
    reference = BladeRuntime(model.path, plain).run(data)
    return Outcome(
        model=model,
        hardware=detect_hardware("cpu"),
        data=data,
        reference=reference,
        mask_outputs=(),
        batch_sizes=(1, 4),
        buckets=((1, 8), (4, 8)),
        plain_runtime=plain,
        plain_latency={1: 1e-4, 4: 2e-4},
        plain_metrics=compare(reference, reference),
        passes=({"name": "ort-graph", "verdict": "failed", "reason": "RuntimeError: test"},),
        chosen="plain",
        model_path=model.path,
        tier="lossless",
        gate=GATES["lossless"],
        runtime=plain,
        reason="plain ORT kept: no candidate passed its accuracy gate",
        speedup=1.0,
        speedup_geomean=1.0,
        synthetic=False,
        elapsed_s=0.5,
        key=key,
    )


def test_the_record_is_frozen(tmp_path: Path) -> None:
    outcome = _outcome(onnx_models.classifier(tmp_path), "k")
    with pytest.raises(dataclasses.FrozenInstanceError):
        outcome.chosen = "fp16"  # type: ignore[misc]


def test_a_written_artifact_loads_and_carries_the_record(tmp_path: Path) -> None:
    outcome = _outcome(onnx_models.classifier(tmp_path), "classifier-key")
    report = build_report(outcome)
    assert report["batch_sizes"] == [1, 4] and report["buckets"] == [[1, 8], [4, 8]]
    assert report["baseline"]["latency_ms"] == {"1": pytest.approx(0.1), "4": pytest.approx(0.2)}
    assert report["test_data"] == "user: 6 examples" and report["chosen"] == "plain"
    assert report["cache"] == {"hit": False, "key": "classifier-key"}

    out, cache = tmp_path / "art", tmp_path / "cache"
    write(out, outcome, report, cache)
    assert json.loads((out / "report.json").read_text()) == json.loads(
        json.dumps(report, default=float)
    )
    doc = json.loads((out / "blade.json").read_text())
    assert doc["candidate"] == "plain" and doc["tier"] == "lossless"
    assert doc["source_sha256"] == outcome.model.sha256
    assert doc["mask"] == {"input": None, "outputs": []}
    artifact = load_artifact(out)
    assert artifact.gate == GATES["lossless"] and artifact.runtime == outcome.runtime
    inputs, outputs = artifact.reference()
    np.testing.assert_array_equal(inputs["x"], outcome.data["x"][:4])  # REFERENCE_ROWS
    assert set(outputs) == set(outcome.reference)
    assert (out / "report.txt").read_text().startswith(f"model {outcome.model.path}")

    hit = from_cache("classifier-key", tmp_path / "again", cache)
    assert hit is not None and hit["cache"] == {"hit": True, "key": "classifier-key"}
    assert (tmp_path / "again" / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()
