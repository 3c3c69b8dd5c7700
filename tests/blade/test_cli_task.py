"""``autoai blade optimize BUNDLE --eval-set FILE``: the table shows the numeric and the task
verdict of every pass; an evaluation set for a plain ONNX model is one clear line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from autoai.cli import app
from tests.blade.task_bundles import keyword_bundle, numeric_test_data, write_eval_set
from tests.fixtures import onnx_models


def test_a_bundle_with_an_eval_set_shows_the_task_metric_per_pass(tmp_path: Path) -> None:
    bundle = keyword_bundle(tmp_path, lossy=True)
    eval_set = write_eval_set(tmp_path / "eval.jsonl")
    test_data = tmp_path / "dense.npz"
    np.savez(test_data, **numeric_test_data(bundle))  # type: ignore[arg-type]
    args = [
        "blade",
        "optimize",
        str(bundle),
        "--eval-set",
        str(eval_set),
        "--test-data",
        str(test_data),
        "--out",
        str(tmp_path / "derived"),
        "--batch-sizes",
        "1,2",
    ]
    env = {"AUTOAI_CACHE": str(tmp_path / "cache"), "COLUMNS": "400"}
    runner = CliRunner()
    table = runner.invoke(app, args, env=env)
    assert table.exit_code == 0, table.output
    int8 = next(line for line in table.stdout.splitlines() if line.startswith("│ int8-dynamic"))
    for cell in ("rejected", "passed", "33.33%", "66.67", "accuracy 100.00% -> 33.33%"):
        assert cell in int8, int8
    assert "numeric" in table.stdout and "lost pts" in table.stdout
    assert "accuracy on 9 examples" in table.stdout
    assert f"artifact: {tmp_path / 'derived'}" in table.stdout
    assert json.loads((tmp_path / "derived" / "pipeline.json").read_text())["model"] == "blade"

    as_json = runner.invoke(app, [*args, "--json", "--task-tolerance", "70"], env=env)
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout)
    entry = next(p for p in report["passes"] if p["name"] == "int8-dynamic")
    assert report["cache"]["hit"] is False  # another tolerance, another artifact
    assert entry["task"]["tolerance_points"] == 70 and entry["verdict"] == "passed"


def test_an_eval_set_for_an_onnx_model_is_one_line_and_exit_2(tmp_path: Path) -> None:
    model = onnx_models.classifier(tmp_path)
    eval_set = write_eval_set(tmp_path / "eval.jsonl")
    result = CliRunner().invoke(app, ["blade", "optimize", str(model), "--eval-set", str(eval_set)])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: an evaluation set ({eval_set}) needs a pipeline bundle")
