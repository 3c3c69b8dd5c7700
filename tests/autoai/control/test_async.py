"""``AsyncControlClient`` against the control plane in process (``httpx.ASGITransport``): the same
methods as ``ControlClient``, job polling with progress, the same errors."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from autoai.control import (
    AsyncControlClient,
    Forbidden,
    InvalidRequest,
    JobFailed,
    NotFound,
    Unauthorized,
)
from autoai.schema import JobInfo
from autoai.testing.models import tagged

from .conftest import wrong_inputs

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_every_endpoint_in_process(acontrol: AsyncControlClient, tmp_path: Path) -> None:
    assert (await acontrol.healthz()).status == "ok"
    v1 = await acontrol.register_model("m", file=tagged(tmp_path, 1.0))
    v2 = await acontrol.register_model("m", file=tagged(tmp_path, 2.0).read_bytes())
    v3 = await acontrol.register_model("m", uri=f"file://{tagged(tmp_path, 3.0)}")
    assert [v.version for v in (v1, v2, v3)] == ["1", "2", "3"]
    assert [m.name for m in await acontrol.list_models()] == ["m"]
    assert (await acontrol.get_model("m")).versions == (v1, v2, v3)
    assert await acontrol.get_version("m", "3") == v3
    await acontrol.delete_version("m", "3")

    readings: list[JobInfo] = []
    job = await acontrol.wait_job(
        await acontrol.deploy("m", "1", {"processor": "onnx"}),
        timeout=90,
        on_progress=readings.append,
    )
    assert job.state == "succeeded" and [r.state for r in readings][-1] == "succeeded"
    assert len({(r.step, r.progress) for r in readings}) > 1  # it moved while watched
    await acontrol.wait_job(await acontrol.deploy("m", "2", {}), timeout=90)
    assert {(d.name, d.version) for d in await acontrol.deployments()} == {("m", "1"), ("m", "2")}
    await acontrol.wait_job(await acontrol.scale("m", "2", 2), timeout=90)
    assert len((await acontrol.deployment("m", "2")).instances) == 2

    routes = {"routes": [{"version": "1", "weight": 50}, {"version": "2", "weight": 50}]}
    published = await acontrol.publish("m", routes)
    assert published.table.model == "m"
    await acontrol.publish("m", {"routes": [{"version": "2", "weight": 100}]})
    assert await acontrol.rollback("m", published.revision) > published.revision
    assert [r.routes for r in await acontrol.releases("m", limit=1)] == [{"1": 50, "2": 50}]
    groups = await acontrol.prometheus_targets()
    assert {g.labels["version"] for g in groups} == {"1", "2"}
    assert "autoai_publishes_total" in await acontrol.metrics()
    answer = await acontrol.request("GET", "/api/v1/models/m/releases", params={"limit": 1})
    assert isinstance(answer, httpx.Response) and answer.json()["releases"]
    await acontrol.undeploy("m", "1", force=True)
    await acontrol.undeploy("m", "2", force=True)


async def test_errors_in_process(
    acontrol: AsyncControlClient, app_transport: httpx.ASGITransport, tmp_path: Path
) -> None:
    with pytest.raises(NotFound) as missing:
        await acontrol.job("no-such-job")
    assert missing.value.status == 404
    async with AsyncControlClient("http://control", transport=app_transport) as anonymous:
        with pytest.raises(Unauthorized):
            await anonymous.register_model("m", uri="file:///nowhere.onnx")
    async with AsyncControlClient("http://c", token="x", transport=app_transport) as wrong:
        with pytest.raises(Forbidden):
            await wrong.rollback("m")
    with pytest.raises(InvalidRequest) as invalid:
        await acontrol.deploy("m", "1", {"processor": "tensorflow"})
    assert invalid.value.status == 422 and invalid.value.detail["problems"]

    await acontrol.register_model("m", file=tagged(tmp_path, 1.0))
    with pytest.raises(InvalidRequest) as undeployed:  # nothing serves version 1 yet
        await acontrol.publish("m", {"routes": [{"version": "1", "weight": 100}]})
    assert undeployed.value.status == 400 and "not deployed" in undeployed.value.error

    spec = {"blade": {"test_data": str(wrong_inputs(tmp_path))}}
    job_id = await acontrol.deploy("m", "1", spec)
    with pytest.raises(JobFailed) as failed:
        await acontrol.wait_job(job_id, timeout=90)
    assert failed.value.job.error is not None
    assert "test data lacks inputs ['x']" in failed.value.job.error.error
