"""``ControlClient`` against a real ``autoai up`` process: every endpoint, job polling with
progress, and each error status as its ``ControlError``."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from autoai.control import (
    Conflict,
    ControlClient,
    ControlError,
    Forbidden,
    InvalidRequest,
    JobFailed,
    NotFound,
    Unauthorized,
    Unreachable,
)
from autoai.schema import DeploySpec, JobInfo, LocalInstanceHealth, PublishRequest
from autoai.testing import ControlPlaneProcess, alive, cmdline, free_port, wait_gone
from autoai.testing.models import tagged

from .conftest import TOKEN, wrong_inputs

pytestmark = pytest.mark.slow


def test_models_by_file_bytes_and_uri_then_listed_shown_and_deleted(
    control: ControlClient, tmp_path: Path
) -> None:
    model = tagged(tmp_path, 1.0)
    by_path = control.register_model("reg", file=model)
    by_bytes = control.register_model("reg", file=model.read_bytes(), filename="again.onnx")
    by_uri = control.register_model("reg", uri=f"file://{model}")
    assert [v.version for v in (by_path, by_bytes, by_uri)] == ["1", "2", "3"]
    assert (by_path.source, by_bytes.source, by_uri.source) == (
        model.name,
        "again.onnx",
        f"file://{model}",
    )
    assert by_path.sha256 == by_bytes.sha256 == by_uri.sha256
    assert [t.name for t in by_path.signature.inputs] == ["x"]

    assert "reg" in [m.name for m in control.list_models()]
    assert [v.version for v in control.get_model("reg").versions] == ["1", "2", "3"]
    assert control.get_version("reg", "2") == by_bytes
    control.delete_version("reg", "2")
    with pytest.raises(NotFound):
        control.get_version("reg", "2")
    assert [v.version for v in control.get_model("reg").versions] == ["1", "3"]
    with pytest.raises(ValueError, match="exactly one of file= and uri="):
        control.register_model("reg")


def test_deploy_followed_with_progress_then_scale_publish_roll_back_undeploy(
    control: ControlClient, tmp_path: Path
) -> None:
    for tag in (1.0, 2.0):
        control.register_model("flow", file=tagged(tmp_path, tag))
    readings: list[JobInfo] = []
    spec = DeploySpec.model_validate({"processor": "onnx", "token": "svc-token"})
    job = control.wait_job(
        control.deploy("flow", "1", spec), timeout=90, on_progress=readings.append
    )
    assert job.state == "succeeded" and readings[-1] == job
    assert [r.progress for r in readings] == sorted(r.progress for r in readings)
    assert job.result is not None and job.result.deployment is not None
    assert job.result.deployment.name == "flow"
    control.wait_job(control.deploy("flow", "2", {"processor": "onnx"}), timeout=90)

    (deployment,) = [d for d in control.deployments() if (d.name, d.version) == ("flow", "1")]
    assert deployment == control.deployment("flow", "1")
    assert deployment.spec.token is None  # never echoed
    (instance,) = deployment.instances
    assert isinstance(instance, LocalInstanceHealth) and alive(instance.pid)
    assert "svc-token" not in cmdline(instance.pid)

    control.wait_job(control.scale("flow", "1", 2), timeout=90)
    assert len(control.deployment("flow", "1").endpoints) == 2

    first = control.publish("flow", {"routes": [{"version": "1", "weight": 100}]})
    second = control.publish(
        "flow",
        PublishRequest.model_validate(
            {"routes": [{"version": "1", "weight": 10}, {"version": "2", "weight": 90}]}
        ),
    )
    assert second.revision > first.revision
    assert [r.weight for r in second.table.routes] == [10, 90]
    releases = control.releases("flow", limit=5)
    assert [r.revision for r in releases] == [second.revision, first.revision]
    assert releases[0].routes == {"1": 10, "2": 90}
    rolled = control.rollback("flow")
    assert rolled > second.revision
    assert control.releases("flow", limit=1)[0].routes == {"1": 100}

    with pytest.raises(Conflict) as refused:  # version 1 carries the traffic
        control.undeploy("flow", "1")
    assert refused.value.status == 409
    control.undeploy("flow", "2")
    control.undeploy("flow", "1", force=True)
    assert wait_gone([instance.pid], 30)  # drained and stopped
    with pytest.raises(NotFound):
        control.deployment("flow", "1")


def test_health_metrics_and_service_discovery(control: ControlClient, tmp_path: Path) -> None:
    health = control.healthz()
    assert health.status == "ok" and health.leader
    control.register_model("sd", file=tagged(tmp_path, 1.0))
    control.wait_job(control.deploy("sd", "1", {}), timeout=90)
    try:
        (group,) = [g for g in control.prometheus_targets() if g.labels["model"] == "sd"]
        assert group.targets == [
            e.removeprefix("http://") for e in control.deployment("sd", "1").endpoints
        ]
        assert "autoai_deploys_total" in control.metrics()
    finally:
        control.undeploy("sd", "1", force=True)


def test_error_statuses_are_one_hierarchy_with_the_server_s_error_and_detail(
    plane: ControlPlaneProcess, control: ControlClient, tmp_path: Path
) -> None:
    with pytest.raises(NotFound) as missing:
        control.get_model("no-such-model")
    assert missing.value.status == 404 and "no-such-model" in missing.value.error
    assert missing.value.detail == {"name": "no-such-model"}

    with ControlClient(plane.url) as anonymous, pytest.raises(Unauthorized) as no_token:
        anonymous.deploy("m", "1", {})
    assert no_token.value.status == 401
    with ControlClient(plane.url, token=SecretStr("wrong")) as wrong, pytest.raises(Forbidden):
        wrong.publish("m", {"routes": []})
    with ControlClient(plane.url, token=SecretStr(TOKEN)) as right:
        assert right.healthz().status == "ok"

    with pytest.raises(InvalidRequest) as unknown_field:
        control.publish("m", {"routes": [], "colour": "red"})
    assert unknown_field.value.status == 422
    assert any("colour" in p for p in unknown_field.value.detail["problems"])
    with pytest.raises(InvalidRequest) as bad_name:
        control.register_model("Not A Name", file=tagged(tmp_path, 1.0))
    assert bad_name.value.status == 400

    control.register_model("busy", file=tagged(tmp_path, 1.0))
    control.wait_job(control.deploy("busy", "1", {}), timeout=90)
    try:
        with pytest.raises(Conflict) as deployed:
            control.delete_version("busy", "1")
        assert deployed.value.status == 409
    finally:
        control.undeploy("busy", "1", force=True)

    control.register_model("broken", file=tagged(tmp_path, 1.0))
    job_id = control.deploy("broken", "1", {"blade": {"test_data": str(wrong_inputs(tmp_path))}})
    with pytest.raises(JobFailed) as failed:
        control.wait_job(job_id, timeout=90)
    assert failed.value.job.state == "failed" and failed.value.job.id == job_id
    assert "test data lacks inputs ['x']" in str(failed.value)
    assert all(isinstance(e, ControlError) for e in (missing.value, failed.value))


def test_nothing_listening_is_unreachable_with_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with ControlClient(url, timeout=5) as control, pytest.raises(Unreachable) as down:
        control.healthz()
    assert str(down.value).startswith(f"no control plane answers at {url}: ")
    assert down.value.status is None and not down.value.timed_out and down.value.url == url
    with pytest.raises(ValueError, match="not an http"):
        ControlClient("ftp://example.org")
