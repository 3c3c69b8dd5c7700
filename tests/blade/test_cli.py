"""``autoai blade optimize`` prints the report (table or JSON) and one clear line on bad input."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from autoai.cli import app
from tests.fixtures import onnx_models


def test_optimize_prints_a_table_and_json(tmp_path: Path) -> None:
    model = onnx_models.tiny_bert(tmp_path, hidden=32, layers=1)
    runner = CliRunner()
    args = [
        "blade",
        "optimize",
        str(model),
        "--out",
        str(tmp_path / "art"),
        "--batch-sizes",
        "1,2",
        "--seq",
        "8",
    ]
    table = runner.invoke(
        app, args, env={"AUTOAI_CACHE": str(tmp_path / "cache"), "COLUMNS": "200"}
    )
    assert table.exit_code == 0, table.output
    assert (
        "blade report" in table.output
        and "int8-dynamic" in table.output
        and "artifact:" in table.output
    )
    as_json = runner.invoke(app, [*args, "--json"], env={"AUTOAI_CACHE": str(tmp_path / "cache")})
    assert as_json.exit_code == 0
    report = json.loads(as_json.stdout[as_json.stdout.index("{") :])
    assert report["cache"]["hit"] is True and report["passes"]


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bogus = tmp_path / "x.onnx"
    bogus.write_bytes(b"nope")
    runner = CliRunner()
    result = runner.invoke(app, ["blade", "optimize", str(bogus), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "not an ONNX model" in result.output
    result = runner.invoke(app, ["blade", "optimize", str(bogus), "--batch-sizes", "a,b"])
    assert result.exit_code == 2 and "comma-separated integers" in result.output
