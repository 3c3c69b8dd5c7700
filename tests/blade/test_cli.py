"""``autoai blade optimize`` prints the report (table or JSON) and one clear line on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner, Result

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


def _one_line(result: Result) -> str:
    assert result.exit_code == 2, result.output
    assert result.stdout == ""  # no empty progress bar before the error
    (line,) = result.stderr.splitlines()
    return line


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bogus = tmp_path / "x.onnx"
    bogus.write_bytes(b"nope")
    runner = CliRunner()
    result = runner.invoke(app, ["blade", "optimize", str(bogus), "--out", str(tmp_path / "o")])
    assert _one_line(result) == (
        f"error: {bogus} is not an ONNX model (expected an ONNX ModelProto file, e.g. exported "
        "with torch.onnx.export): it is text, starting 'nope'"
    )
    result = runner.invoke(app, ["blade", "optimize", str(bogus), "--batch-sizes", "a,b"])
    assert _one_line(result) == (
        "error: --batch-sizes 'a,b': expected comma-separated integers such as 1,8,32"
    )


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "the file is empty"),
        (
            b"\x08\x07\xff\xfe\x00garbage",
            "its bytes do not parse as ONNX protobuf (corrupt or truncated?)",
        ),
        (b"PK\x03\x04\x14\x00", "it is a zip archive (a PyTorch checkpoint?)"),
        (b"\x80\x04\x95\x00", "it is a Python pickle (a PyTorch or scikit-learn checkpoint?)"),
    ],
)
def test_files_that_are_not_onnx_say_what_they_look_like(
    content: bytes, reason: str, tmp_path: Path
) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    result = CliRunner().invoke(app, ["blade", "optimize", str(path)])
    assert _one_line(result) == (
        f"error: {path} is not an ONNX model (expected an ONNX ModelProto file, e.g. exported "
        f"with torch.onnx.export): {reason}"
    )


def test_a_graph_onnx_refuses_is_one_line(tmp_path: Path) -> None:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 4])
    add = onnx.helper.make_node("Add", ["x", "undefined"], ["y"])
    graph = onnx.helper.make_graph([add], "broken", [x], [y])
    path = tmp_path / "broken.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), path)
    line = _one_line(CliRunner().invoke(app, ["blade", "optimize", str(path)]))
    assert line.startswith(
        f"error: {path} is not an ONNX model (expected an ONNX ModelProto file, e.g. exported "
        "with torch.onnx.export): onnx's checker refuses its graph: "
    ), line
    assert "undefined" in line
