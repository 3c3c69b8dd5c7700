"""blade.optimize on pipeline bundles: the derived bundle it writes, and the task gate that judges
each lossy step by accuracy (or slot F1) on a labelled set besides the numeric gates.

The bundles whose int8 step loses accuracy (or keeps it) by construction are explained in
``tests/blade/task_bundles.py``: an activation outlier makes int8 round every real sentence's
keyword feature to zero, while the keyword-dense rows the numeric gate is fed keep their labels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from blade import BladeError, InvalidModel, InvalidTestData, load_artifact, optimize
from blade._artifact import render_report
from blade._runtime import BladeRuntime
from eas_server.pipeline import load_bundle
from eas_server.processors import create_processor
from eas_server.processors.pipeline import PipelineProcessor
from tests.blade.task_bundles import (
    SENTENCES,
    eval_rows,
    keyword_bundle,
    numeric_test_data,
    write_eval_set,
)
from tests.eas_server.bundles import SLOT_EXAMPLES, make_bundle, write_examples
from tests.fixtures import onnx_models


def _optimize(bundle: Path, tmp_path: Path, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("test_data", numeric_test_data(bundle))
    result = optimize(
        bundle,
        batch_sizes=(1, 4),
        cache_dir=tmp_path / "cache",
        output_dir=tmp_path / f"{bundle.name}.out",
        progress=False,
        **kwargs,
    )
    assert result.artifact_dir == tmp_path / f"{bundle.name}.out"
    return result.report


def _pass(report: dict[str, Any], name: str) -> dict[str, Any]:
    entry: dict[str, Any] = next(p for p in report["passes"] if p["name"] == name)
    return entry


def test_int8_that_loses_accuracy_is_refused_although_the_numeric_gate_passes(
    tmp_path: Path,
) -> None:
    bundle = keyword_bundle(tmp_path, lossy=True)
    eval_set = write_eval_set(tmp_path / "eval.jsonl")
    # Without the labelled set only the numeric gates judge, and int8 passes them: the
    # construction holds, and it is the task gate below that refuses the step.
    numeric = _optimize(bundle, tmp_path / "numeric")
    assert _pass(numeric, "int8-dynamic")["verdict"] == "passed"
    assert numeric["task"]["eval_set"] is None and "numeric gates only" in numeric["task"]["note"]
    assert "task" not in _pass(numeric, "int8-dynamic")

    report = _optimize(bundle, tmp_path, eval_set=eval_set)
    int8 = _pass(report, "int8-dynamic")
    assert int8["numeric"] == {"verdict": "passed", "reason": "passed"}
    task = int8["task"]
    assert task["metric"] == "accuracy" and task["gated"] is True
    assert task["before"] == 1.0 and task["after"] == pytest.approx(1 / 3)
    assert task["lost_points"] == pytest.approx(200 / 3, abs=1e-3)
    assert task["verdict"] == "rejected" and "more than the 0.5 allowed" in task["reason"]
    assert int8["verdict"] == "rejected" and int8["reason"].startswith("task: accuracy")
    assert report["chosen"] != "int8-dynamic"
    for entry in report["passes"]:  # a recovery retry, if the CPU made one, is judged alike
        if entry.get("tier") == "int8" and entry["verdict"] == "passed":
            assert entry["task"]["lost_points"] <= 0.5
    assert report["task"]["metric"] == "accuracy" and report["task"]["examples"] == 9
    assert report["task"]["baseline"] == 1.0 and report["task"]["plain"] == 1.0
    assert report["task"]["tolerance_points"] == 0.5
    # lossless steps are scored, not gated
    graph = _pass(report, "ort-graph")
    assert graph["task"]["verdict"] == "not gated" and graph["task"]["after"] == 1.0
    text = render_report(report)
    assert "accuracy on 9 examples" in text and "lost" in text
    assert "numeric: passed; task: accuracy 100.00% -> 33.33%" in text


def test_int8_that_keeps_accuracy_is_accepted(tmp_path: Path) -> None:
    bundle = keyword_bundle(tmp_path, lossy=False)
    report = _optimize(bundle, tmp_path, eval_set=write_eval_set(tmp_path / "eval.jsonl"))
    int8 = _pass(report, "int8-dynamic")
    assert int8["verdict"] == "passed" and int8["numeric"]["verdict"] == "passed"
    assert int8["task"]["verdict"] == "passed" and int8["task"]["lost_points"] == 0.0
    assert "latency_ms" in int8  # timed: a candidate for the choice


def test_the_tolerance_is_in_points_and_its_bound_is_allowed(tmp_path: Path) -> None:
    """199 lights_on sentences and 1 (then 2) others: int8 of the lossy bundle answers
    lights_on to all, so it loses exactly 0.5 points (allowed by default), then 1 point
    (refused by default, allowed with task_tolerance=1)."""
    bundle = keyword_bundle(tmp_path, lossy=True)
    on = [{"text": SENTENCES["lights_on"][i % 3], "label": "lights_on"} for i in range(200)]
    off = {"text": SENTENCES["lights_off"][0], "label": "lights_off"}
    half = write_examples(tmp_path / "half.jsonl", [*on[:199], off])
    one = write_examples(tmp_path / "one.jsonl", [*on[:198], off, off])
    assert _pass(_optimize(bundle, tmp_path / "a", eval_set=half), "int8-dynamic")["task"] == {
        "metric": "accuracy",
        "before": 1.0,
        "after": 0.995,
        "lost_points": 0.5,
        "tolerance_points": 0.5,
        "gated": True,
        "verdict": "passed",
        "reason": "accuracy 100.00% -> 99.50%: lost 0.50 points, within 0.5",
    }
    refused = _pass(_optimize(bundle, tmp_path / "b", eval_set=one), "int8-dynamic")
    assert refused["verdict"] == "rejected" and refused["task"]["lost_points"] == 1.0
    allowed = _pass(
        _optimize(bundle, tmp_path / "c", eval_set=one, task_tolerance=1.0), "int8-dynamic"
    )
    assert allowed["verdict"] == "passed" and allowed["task"]["tolerance_points"] == 1.0


def test_the_derived_bundle_serves_through_the_blade_runtime(tmp_path: Path) -> None:
    bundle = keyword_bundle(tmp_path, lossy=False)
    _optimize(bundle, tmp_path, eval_set=write_eval_set(tmp_path / "eval.jsonl"))
    derived = tmp_path / "keeps.out"
    assert {p.name for p in derived.iterdir()} == {
        "pipeline.json",
        "tokenizer.json",
        "labels.txt",
        "blade",
    }
    source_spec = json.loads((bundle / "pipeline.json").read_text())
    spec = json.loads((derived / "pipeline.json").read_text())
    assert spec["model"] == "blade" and spec["task"] == source_spec["task"]
    assert (derived / "labels.txt").read_text() == (bundle / "labels.txt").read_text()
    assert (derived / "tokenizer.json").read_bytes() == (bundle / "tokenizer.json").read_bytes()
    loaded = load_bundle(derived)
    assert loaded.is_blade and loaded.model_path == derived / "blade"
    artifact = load_artifact(derived / "blade")
    runtime = BladeRuntime(artifact.model_path, artifact.runtime)
    texts = [t for texts in SENTENCES.values() for t in texts]
    out = loaded.run([texts], runtime.run)
    want = [label for label, texts in SENTENCES.items() for _ in texts]
    assert [x.decode() for x in out["label"]] == want
    assert out["score"].dtype == np.float32 and (out["score"] > 1 / 3).all()  # top of 3
    # the report travels with the artifact, with the task section
    written = json.loads((derived / "blade" / "report.json").read_text())
    assert written["bundle"] == str(bundle) and written["task"]["metric"] == "accuracy"
    # and eas-server's pipeline processor serves it, with the blade processor inside
    processor = create_processor("pipeline", str(derived))
    processor.load()
    try:
        assert isinstance(processor, PipelineProcessor) and processor.inner is not None
        assert processor.inner.kind == "blade"
        served = processor.run({"text": np.array([t.encode() for t in texts], dtype=object)}, 0)
        assert [x.decode() for x in served["label"]] == want
    finally:
        processor.close()


def test_slots_are_judged_by_slot_f1(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, "slots")
    rows = [{"text": text, "slots": slots} for text, slots in SLOT_EXAMPLES]
    eval_set = write_examples(tmp_path / "slots.jsonl", rows)
    report = _optimize(bundle, tmp_path, eval_set=eval_set, test_data=None)
    assert report["task"]["metric"] == "slot_f1" and report["task"]["baseline"] == 1.0
    # without test data, the set's texts feed the numeric gates too (real text, not drawn ids)
    assert report["test_data"].startswith("evaluation set: its first 4 texts")
    graph = _pass(report, "ort-graph")
    assert graph["task"]["metric"] == "slot_f1" and graph["task"]["after"] == 1.0


def test_the_cache_key_holds_the_eval_set_and_the_tolerance(tmp_path: Path) -> None:
    bundle = keyword_bundle(tmp_path, lossy=False)
    first = write_eval_set(tmp_path / "first.jsonl")
    second = write_eval_set(tmp_path / "second.jsonl", eval_rows(per_label=2))

    def hit(eval_set: Path | None, tolerance: float = 0.5) -> bool:
        kwargs: dict[str, Any] = {"task_tolerance": tolerance}
        if eval_set is not None:
            kwargs["eval_set"] = eval_set
        return bool(_optimize(bundle, tmp_path, **kwargs)["cache"]["hit"])

    assert not hit(first)
    assert hit(first)
    assert not hit(first, tolerance=1.0)
    assert not hit(second)
    assert not hit(None)  # numeric gates only: another outcome, another entry
    (tmp_path / "copy.jsonl").write_bytes(first.read_bytes())
    assert hit(tmp_path / "copy.jsonl")  # the set's content is the key, not its path


def test_an_eval_set_needs_a_bundle(tmp_path: Path) -> None:
    model = onnx_models.classifier(tmp_path)
    eval_set = write_eval_set(tmp_path / "eval.jsonl")
    with pytest.raises(BladeError, match="needs a pipeline bundle") as caught:
        optimize(model, eval_set=eval_set, output_dir=tmp_path / "out", progress=False)
    assert isinstance(caught.value, InvalidTestData)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"text": "turn on the lights", "label": "dance"}], "label 'dance'"),
        ([{"text": "turn on the lights"}], "expected 'label'"),
        ([], "no examples"),
    ],
)
def test_an_eval_set_that_does_not_fit_is_refused_before_anything_is_written(
    tmp_path: Path, rows: list[dict[str, str]], message: str
) -> None:
    bundle = keyword_bundle(tmp_path, lossy=False)
    eval_set = write_examples(tmp_path / "bad.jsonl", rows)
    with pytest.raises(InvalidTestData, match=message):
        optimize(bundle, eval_set=eval_set, output_dir=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".blade")] == []


def test_bad_bundles_and_tolerances_are_refused(tmp_path: Path) -> None:
    embed = make_bundle(tmp_path, "embed")
    with pytest.raises(InvalidTestData, match="embed bundle has no labels"):
        optimize(embed, eval_set=write_eval_set(tmp_path / "e.jsonl"), progress=False)
    broken = make_bundle(tmp_path, "classify", name="broken", omit=("tokenizer.json",))
    with pytest.raises(InvalidModel, match="not a bundle blade can optimize"):
        optimize(broken, progress=False)
    bundle = keyword_bundle(tmp_path, lossy=False)
    with pytest.raises(ValueError, match="task_tolerance is -1"):
        optimize(bundle, task_tolerance=-1, progress=False)
    with pytest.raises(ValueError, match="would replace the bundle"):
        optimize(bundle, output_dir=bundle, progress=False)
    assert (bundle / "model.onnx").is_file()
    derived = tmp_path / "derived"
    optimize(bundle, output_dir=derived, cache_dir=tmp_path / "c", progress=False)
    with pytest.raises(InvalidModel, match="already optimized"):
        optimize(derived, progress=False)
