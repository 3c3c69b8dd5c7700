"""The CLI against a real control plane: push, deploy, status, publish, predict, roll back, scale,
undeploy; and its errors (one line on stderr, exit code 2; 1 for a failed job)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from typer.testing import Result

from tests.fixtures import onnx_models

from .conftest import TOKEN, ControlPlane

pytestmark = pytest.mark.slow


def _ok(result: Result) -> str:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _json(result: Result) -> Any:
    return json.loads(_ok(result))


def _error(result: Result, code: int = 2) -> str:
    """The one stderr line of a command that failed with ``code``; stdout stays empty."""
    assert result.exit_code == code, f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


def test_push_deploy_publish_predict_roll_back_undeploy(
    control_plane: ControlPlane, models_dir: Path
) -> None:
    cli = control_plane.cli
    one, two = (onnx_models.tagged(models_dir, tag) for tag in (1.0, 2.0))
    assert "registered tagger version 1 " in _ok(cli(f"models push {one} --name tagger"))
    pushed = _json(cli(f"models push {two} --name tagger --json"))
    assert (pushed["name"], pushed["version"]) == ("tagger", "2")
    listing = _ok(cli("models ls"))
    assert "tagger" in listing and "x FP32 [-1, -1]" in listing
    (model,) = _json(cli("models ls tagger --json"))["models"]
    assert [v["version"] for v in model["versions"]] == ["1", "2"]

    rpc = "--max-batch-size 8 --batch-timeout-ms 2"
    shown = _ok(cli(f"deploy tagger --version 1 --instances 1 --cpu 1 {rpc}"))
    assert "deployed tagger version 1: processor onnx, 1 instance(s), 1 alive, 1 ready" in shown
    assert "start 1 instance(s) of tagger-1" in shown  # the job's log lines were followed
    job = _json(cli("deploy tagger --version 2 --json"))
    assert job["state"] == "succeeded"
    assert job["result"]["deployment"]["processor"] == "onnx"

    # The EAS rpc keys reached the instance: its Triton-style config says so.
    status = _json(cli("status tagger --json"))
    first = next(d for d in status["deployments"] if d["version"] == "1")
    assert first["spec"]["metadata"] == {
        "instance": 1,
        "cpu": 1,
        "rpc": {"max_batch_size": 8, "max_batch_timeout": 2.0},
    }
    config = httpx.get(f"{first['endpoints'][0]}/v2/models/tagger/versions/1/config").json()
    assert config["max_batch_size"] == 8
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    assert status["routes"] == {"tagger": None}
    table = _ok(cli("status"))
    assert "deployments" in table and "not published: tagger" in table

    assert "revision 1: 1=90 2=10, sticky key user" in _ok(
        cli("publish tagger --route 1=90 --route 2=10 --sticky-key user --reason canary")
    )
    assert "1=90 2=10" in _ok(cli("status"))
    releases = _ok(cli("releases tagger"))
    assert "canary" in releases and "1=90 2=10" in releases

    x = [[1.0, 2.0, 3.0]]
    pinned = _json(cli("predict tagger --input x=[[1,2,3]] --version 2 --json"))
    assert pinned["outputs"] == [
        {"name": "y", "datatype": "FP32", "shape": [1, 3], "data": [[3.0, 4.0, 5.0]]}
    ]
    np.save(models_dir / "x.npy", np.array(x, np.float32))
    for _ in range(3):  # routed by weight: whichever version answered added its tag
        routed = _json(cli(f"predict tagger --input x=@{models_dir / 'x.npy'} --json"))
        tag = int(routed["version"])
        assert routed["outputs"][0]["data"] == [[v + tag for v in x[0]]]
        assert routed["why"].startswith("picked by weight from revision 1")
    assert "[[2. 3. 4.]]" in _ok(cli("predict tagger --input x=[[1,2,3]] --version 1"))

    promoted = _json(cli("publish tagger --route 2=100 --expected-revision 1 --json"))
    assert promoted["revision"] == 2
    stale = _error(cli("publish tagger --route 2=100 --expected-revision 1"))
    assert "HTTP 409" in stale
    back = _ok(cli("rollback tagger"))
    assert "rolled back tagger, now at revision 3: 1=90 2=10 (rollback to revision 1)" in back
    history = _json(cli("releases tagger --json"))["releases"]
    assert [r["revision"] for r in history] == [3, 2, 1]

    refused = _error(cli("undeploy tagger --version 2"))
    assert "carries traffic" in refused and "--force undeploys it anyway" in refused
    for version in ("1", "2"):
        assert f"undeployed tagger version {version}" in _ok(
            cli(f"undeploy tagger --version {version} --force")
        )
    assert _json(cli("status tagger --json"))["deployments"] == []
    assert "deleted tagger version 2" in _ok(cli("models rm tagger --version 2"))


def _has_scale_route(url: str) -> bool:
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    return "patch" in paths.get("/api/v1/models/{name}/versions/{version}/deployment", {})


def test_scale_follows_the_job(control_plane: ControlPlane, models_dir: Path) -> None:
    if not _has_scale_route(control_plane.url):
        pytest.skip("the control plane has no PATCH .../deployment (scale) route yet")
    cli = control_plane.cli
    _ok(cli(f"models push {onnx_models.tagged(models_dir, 5.0)} --name scaler"))
    _ok(cli("deploy scaler --version 1"))
    shown = _ok(cli("scale scaler --version 1 --instances 2"))
    assert "scaled scaler version 1: processor onnx, 2 instance(s), 2 alive, 2 ready" in shown
    (deployment,) = _json(cli("status scaler --json"))["deployments"]
    assert len(deployment["endpoints"]) == 2
    _ok(cli("undeploy scaler --version 1 --force"))


def test_a_failed_deploy_job_exits_1_with_its_log(
    control_plane: ControlPlane, models_dir: Path
) -> None:
    cli = control_plane.cli
    _ok(cli(f"models push {onnx_models.tagged(models_dir, 7.0)} --name broken"))
    # A spec the control plane can refuse up front is one line and exit 2, no job.
    refused = _error(cli("deploy broken --version 1 --blade --blade-level o9"))
    assert "'o1' or 'o2'" in refused and "HTTP 422" in refused
    # Test data that is not there fails in the job, on the control plane's side.
    missing = "--blade-test-data /nonexistent/x.npz"
    result = cli(f"deploy broken --version 1 --blade {missing}")
    assert result.exit_code == 1, result.stderr
    assert "error: deploy broken version 1 failed: " in result.stderr
    assert "cannot read test data /nonexistent/x.npz" in result.stderr
    assert "job log (last lines):" in result.stderr
    job = _json(cli(f"deploy broken --version 1 {missing} --no-wait --json"))
    followed = cli(f"job {job['job']} --wait --json")
    assert followed.exit_code == 1
    assert json.loads(followed.stdout)["state"] == "failed"
    assert "failed: " in followed.stderr
    error = _json(cli(f"job {job['job']} --json"))["error"]["error"]
    assert error.startswith("InvalidTestData"), error
    assert _json(cli("status broken --json"))["deployments"] == []


@pytest.fixture
def refusing_url() -> Iterator[str]:
    """A loopback port that is bound but not listening: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_errors_are_one_line_and_exit_2(
    control_plane: ControlPlane, models_dir: Path, refusing_url: str, tmp_path: Path
) -> None:
    cli = control_plane.cli
    line = _error(cli("publish tagger --route 2=ninety"))
    assert "--route '2=ninety': the weight must be an integer" in line
    assert "HTTP 404" in _error(cli("deploy no-such-model --version 1"))
    assert "HTTP 404" in _error(cli("status no-such-model"))
    assert "HTTP 404" in _error(cli("predict no-such-model --input x=[[1]]"))

    model = str(onnx_models.tagged(models_dir, 3.0))
    wrong = _error(cli(f"models push {model} --name guarded", token="wrong"))
    assert "admin token (HTTP 403; set AUTOAI_TOKEN or pass --token-file)" in wrong
    missing = _error(cli(f"models push {model} --name guarded", token=None))
    assert "(HTTP 401; set AUTOAI_TOKEN or pass --token-file)" in missing
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    _ok(cli(f"models push {model} --name guarded --token-file {token_file}", token=None))
    unpublished = _error(cli("predict guarded --input x=[[1]]"))
    assert "never been published: pass --version" in unpublished
    assert "has no input z" in _error(cli("predict guarded --input z=[[1]] --version 1"))
    assert "not deployed" in _error(cli("predict guarded --input x=[[1]] --version 1"))

    down = _error(cli("status", url=refusing_url))
    assert f"cannot reach the control plane at {refusing_url} (is `autoai up` running?)" in down
    assert "is not an http:// or https:// URL" in _error(cli("status", url="ftp://example"))
    assert "--token-file" in _error(cli(f"status --token-file {tmp_path / 'missing'}"))
