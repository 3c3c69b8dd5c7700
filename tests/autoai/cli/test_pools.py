"""``autoai pools list | show | delete`` against a real control plane with a real pool (a pooled
deploy through ``autoai deploy --spec``): tables, ``--json``, and the errors (one line on stderr,
exit code 2: no such pool, a pool still in use, no token)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import Result

from autoai.testing import alive, wait_gone
from tests.fixtures import onnx_models

from .conftest import ControlPlane

pytestmark = pytest.mark.slow


def _ok(result: Result) -> str:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _json(result: Result) -> Any:
    return json.loads(_ok(result))


def _error(result: Result) -> str:
    """The one stderr line of a command that failed with exit code 2; stdout stays empty."""
    assert result.exit_code == 2, f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ")
    return line


def test_pools_list_show_delete(control_plane: ControlPlane, tmp_path: Path) -> None:
    cli = control_plane.cli
    assert _ok(cli("pools list")).strip() == "no pools (a deploy with metadata.pool creates one)"
    assert _json(cli("pools list --json")) == {"pools": []}
    assert _error(cli("pools show nope")) == "error: no pool 'nope' (HTTP 404)"
    assert _error(cli("pools delete nope")) == "error: no pool 'nope' (HTTP 404)"

    model = onnx_models.tagged(tmp_path, 1.0)
    _ok(cli(f"models push {model} --name pooled"))
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"metadata": {"pool": "nlu", "pool_instances": 1}}))
    _ok(cli(f"deploy pooled --version 1 --spec {spec}"))
    try:
        listing = _ok(cli("pools list"))
        assert "nlu" in listing and "pooled/1" in listing
        (pool,) = _json(cli("pools list --json"))["pools"]
        assert (pool["name"], pool["size"], pool["deployments"]) == ("nlu", 1, ["pooled/1"])
        shown = _json(cli("pools show nlu --json"))
        assert shown["service"] == "pool-nlu" and shown["deployments"] == ["pooled/1"]
        (instance,) = shown["instances"]
        assert instance["alive"] and instance["ready"] and alive(instance["pid"])
        table = _ok(cli("pools show nlu"))
        assert "pool nlu: 1 instance(s) on local, created by pooled/1" in table
        assert f"pid {instance['pid']}" in table and "deployments: pooled/1" in table

        in_use = _error(cli("pools delete nlu"))
        assert in_use == "error: pool 'nlu' serves pooled/1: undeploy them first (HTTP 409)"
        no_token = _error(cli("pools delete nlu", token=None))
        assert "(HTTP 401; set AUTOAI_TOKEN or pass --token-file)" in no_token
    finally:
        _ok(cli("undeploy pooled --version 1 --force"))

    assert "deployments: none" in _ok(cli("pools show nlu"))
    assert _ok(cli("pools delete nlu")) == "deleted pool nlu: its instances are stopped\n"
    assert wait_gone([instance["pid"]], 30)
    assert _json(cli("pools list --json")) == {"pools": []}
