"""Who can write when nobody set a token: the settings' rule, and ``autoai_build_info``'s
``insecure`` label on the in-process app."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from autoai.api import ControlSettings, create_app


@pytest.mark.parametrize(
    ("host", "token", "exposed"),
    [
        ("127.0.0.1", None, False),
        ("127.0.1.1", None, False),
        ("localhost", None, False),
        ("::1", None, False),
        ("0.0.0.0", None, True),
        ("::", None, True),
        ("10.0.0.1", None, True),
        ("control.example.com", None, True),
        ("0.0.0.0", "s3cret", False),
        ("10.0.0.1", "s3cret", False),
    ],
)
def test_exposed_without_token(host: str, token: str | None, exposed: bool) -> None:
    settings = ControlSettings(host=host, admin_token=token)
    assert settings.exposed_without_token is exposed
    assert settings.insecure is False


def test_insecure_comes_from_autoai_insecure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOAI_INSECURE", "true")
    assert ControlSettings().insecure


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("update", "label"),
    [
        ({}, "false"),  # the fixture's: loopback, with a token
        ({"host": "0.0.0.0", "admin_token": None, "insecure": True}, "true"),
        ({"host": "0.0.0.0", "insecure": True}, "false"),  # a token: nothing is open
        ({"admin_token": None, "insecure": True}, "false"),  # loopback: the flag opens nothing
    ],
)
async def test_build_info_says_whether_writes_are_open_to_the_network(
    settings: ControlSettings, update: dict[str, object], label: str
) -> None:
    app = create_app(settings.model_copy(update={"reconcile_interval": 0, **update}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://control") as client:
            text = (await client.get("/metrics")).text
    (build,) = [
        sample.labels
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "autoai_build_info"
    ]
    assert build["insecure"] == label
