"""Release safety for bundles, through the real API and deployed eas-server instances: a publish
that changes the label set (between its versions, or from the published table's) is refused
unless it says the change is intended, and then the table and the releases record it; versions
whose external outputs differ are refused whatever the flag."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from autoai.api import ControlSettings
from tests.eas_server.bundles import CLASSIFY_LABELS, make_bundle
from tests.fixtures.system import control_api

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

TOKEN = "release-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MORE = (*CLASSIFY_LABELS, "music")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = ControlSettings(
        store_url=f"sqlite:///{tmp_path / 'store.db'}",
        repo_dir=tmp_path / "repo",
        run_dir=tmp_path / "run",
        admin_token=TOKEN,
    )
    async with control_api(settings) as c:
        yield c


async def _ok(answer: httpx.Response, code: int = 200) -> dict[str, Any]:
    assert answer.status_code == code, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def _register_and_deploy(client: httpx.AsyncClient, bundle: Path) -> str:
    body = {"name": "intent", "uri": f"file://{bundle}"}
    version = str(
        (await _ok(await client.post("/api/v1/models", json=body, headers=AUTH), 201))["version"]
    )
    url = f"/api/v1/models/intent/versions/{version}/deploy"
    job = (await _ok(await client.post(url, json={}, headers=AUTH), 202))["job"]
    for _ in range(900):  # bounded: 90 s
        doc = (await client.get(f"/api/v1/jobs/{job}")).json()
        if doc["state"] in ("succeeded", "failed"):
            assert doc["state"] == "succeeded", doc
            return version
        await asyncio.sleep(0.1)
    raise AssertionError(f"the deploy of version {version} did not finish")


async def _publish(
    client: httpx.AsyncClient, versions: dict[str, int], code: int = 200, **more: Any
) -> dict[str, Any]:
    routes = [{"version": v, "weight": w} for v, w in versions.items()]
    answer = await client.post(
        "/api/v1/models/intent/publish", json={"routes": routes, **more}, headers=AUTH
    )
    return await _ok(answer, code)


async def test_a_label_change_needs_the_flag_and_is_recorded(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    three = await _register_and_deploy(client, make_bundle(tmp_path, name="three"))
    four = await _register_and_deploy(client, make_bundle(tmp_path, name="four", labels=MORE))
    top2 = await _register_and_deploy(client, make_bundle(tmp_path, name="top2", top_k=2))

    first = await _publish(client, {three: 100})
    assert first["table"]["labels"] == sorted(CLASSIFY_LABELS)
    assert first["table"]["label_change"] is False

    mixed = await _publish(client, {three: 90, four: 10}, 400)
    assert mixed["error"] == (
        f"versions '{three}' and '{four}' of 'intent' answer with different labels: "
        f"'{four}' adds ['music']; publish with allow_label_change to make the change intended"
    )
    assert mixed["detail"] == {"versions": [three, four], "added": ["music"], "removed": []}
    replaced = await _publish(client, {four: 100}, 400)
    assert replaced["error"].startswith(
        f"the published table of 'intent' (revision {first['revision']}) answers with labels "
        f"{sorted(CLASSIFY_LABELS)}; this publish (versions {four}) adds ['music']"
    )
    outputs = await _publish(client, {three: 90, top2: 10}, 400, allow_label_change=True)
    assert outputs["error"].startswith(f"version '{top2}' gives other outputs than '{three}':")
    assert "labels BYTES [-1, 2], scores FP32 [-1, 2] against label BYTES" in outputs["error"]

    canary = await _publish(
        client, {three: 90, four: 10}, allow_label_change=True, reason="music intent"
    )
    assert canary["table"]["labels"] == sorted(MORE)
    assert canary["table"]["label_change"] is True
    again = await _publish(client, {three: 50, four: 50}, 400)  # still two label sets
    assert again["detail"]["added"] == ["music"]
    promoted = await _publish(client, {four: 100})  # the published labels hold music already
    assert promoted["table"]["label_change"] is False
    back = await _ok(await client.post("/api/v1/models/intent/rollback", json={}, headers=AUTH))
    releases = (await client.get("/api/v1/models/intent/releases")).json()["releases"]
    assert [(r["revision"], r["labels"], r["label_change"]) for r in releases] == [
        (back["revision"], sorted(MORE), False),  # rolled back to the canary: same labels
        (promoted["revision"], sorted(MORE), False),
        (canary["revision"], sorted(MORE), True),
        (first["revision"], sorted(CLASSIFY_LABELS), False),
    ]
    assert releases[2]["reason"] == "music intent"
