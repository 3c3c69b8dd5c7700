"""Pools through both clients: ``pools()``, ``pool(name)``, ``delete_pool(name)`` against a real
``autoai up`` with a real pool of ``eas-server --model-repository`` processes (listed, shown,
refused while a version is on it, deleted once undeployed), each error status as its
``ControlError``; the same methods on the asyncio client in process; and
``kill_recorded_instances`` stopping a pool that a test forgot."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from autoai.control import (
    AsyncControlClient,
    Conflict,
    ControlClient,
    Forbidden,
    NotFound,
    Unauthorized,
)
from autoai.schema import LocalInstanceHealth, Pool
from autoai.testing import (
    ControlPlaneProcess,
    alive,
    control_plane,
    kill_recorded_instances,
    wait_gone,
)
from autoai.testing.models import tagged

from .conftest import TOKEN

pytestmark = pytest.mark.slow


def _pids(pool: Pool) -> list[int]:
    return [i.pid for i in pool.instances if isinstance(i, LocalInstanceHealth)]


def test_a_pool_listed_shown_refused_while_used_then_deleted(
    plane: ControlPlaneProcess, control: ControlClient, tmp_path: Path
) -> None:
    assert control.pools() == []
    with pytest.raises(NotFound) as missing:
        control.pool("nope")
    assert missing.value.status == 404 and missing.value.detail == {"pool": "nope"}
    with pytest.raises(NotFound):
        control.delete_pool("nope")

    control.register_model("pm", file=tagged(tmp_path, 1.0))
    spec = {"processor": "onnx", "metadata": {"pool": "cp", "pool_instances": 1}}
    control.wait_job(control.deploy("pm", "1", spec), timeout=90)
    try:
        (listed,) = control.pools()
        shown = control.pool("cp")
        assert (shown.name, shown.service, shown.size) == ("cp", "pool-cp", 1)
        assert shown.deployments == listed.deployments == ["pm/1"]
        assert shown.created_by and shown.orchestrator == "local"
        (instance,) = shown.instances
        assert isinstance(instance, LocalInstanceHealth)
        assert instance.alive and instance.ready and alive(instance.pid)
        assert _pids(listed) == [instance.pid]

        with pytest.raises(Conflict) as in_use:
            control.delete_pool("cp")
        assert in_use.value.status == 409 and in_use.value.detail is not None
        assert in_use.value.detail["deployments"] == ["pm/1"]
        with ControlClient(plane.url) as anonymous, pytest.raises(Unauthorized):
            anonymous.delete_pool("cp")
        with ControlClient(plane.url, token="wrong") as wrong, pytest.raises(Forbidden):
            wrong.delete_pool("cp")
        assert alive(instance.pid)  # none of the refusals touched it
    finally:
        control.undeploy("pm", "1", force=True)

    assert control.pool("cp").deployments == []  # a pool outlives its deployments
    control.delete_pool("cp")
    assert wait_gone([instance.pid], 30)  # drained and stopped
    assert control.pools() == []
    with pytest.raises(NotFound):
        control.pool("cp")


@pytest.mark.anyio
async def test_the_asyncio_client_s_pool_methods(
    acontrol: AsyncControlClient, app_transport: httpx.ASGITransport
) -> None:
    assert await acontrol.pools() == []
    with pytest.raises(NotFound) as missing:
        await acontrol.pool("nope")
    assert missing.value.detail == {"pool": "nope"}
    with pytest.raises(NotFound):
        await acontrol.delete_pool("nope")
    async with AsyncControlClient("http://control", transport=app_transport) as anonymous:
        with pytest.raises(Unauthorized):
            await anonymous.delete_pool("nope")


def test_kill_recorded_instances_stops_a_pool_a_test_forgot(tmp_path: Path) -> None:
    """The control plane stopped with a pool and an exclusive deployment left running (their
    processes outlive it): the helper finds both in the store's records and kills them."""
    with control_plane(tmp_path, token=TOKEN, env={"HOME": str(tmp_path)}) as plane:
        with plane.client() as control:
            control.register_model("leak", file=tagged(tmp_path, 1.0))
            spec = {"metadata": {"pool": "leaky", "pool_instances": 1}}
            control.wait_job(control.deploy("leak", "1", spec), timeout=90)
            control.register_model("solo", file=tagged(tmp_path, 2.0))
            control.wait_job(control.deploy("solo", "1", {}), timeout=90)
            pooled = _pids(control.pool("leaky"))
            (solo,) = control.deployment("solo", "1").instances
            assert isinstance(solo, LocalInstanceHealth) and len(pooled) == 1
    try:
        assert all(alive(pid) for pid in [*pooled, solo.pid])  # the plane's stop left them
    finally:
        killed = kill_recorded_instances(plane.store_url)
    assert sorted(killed) == sorted([*pooled, solo.pid])
    assert wait_gone(killed, 10)
    assert kill_recorded_instances(plane.store_url) == []  # gone ones are not signalled again
