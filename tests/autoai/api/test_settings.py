"""``ControlSettings``: frozen, the admin token a secret, the store default config_store's."""

from __future__ import annotations

import json

import pydantic
import pytest
from pydantic import SecretStr

from autoai.api import ControlSettings
from config_store import default_store_url

TOKEN = "s3cret-admin-token"


def test_settings_are_frozen() -> None:
    settings = ControlSettings(port=8081)
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        settings.port = 9000  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        settings.kubernetes.namespace = "other"  # type: ignore[misc]
    changed = settings.model_copy(update={"protect_reads": True})
    assert changed.protect_reads and not settings.protect_reads


@pytest.mark.parametrize("source", ["argument", "environment"])
def test_the_admin_token_is_kept_out_of_repr_and_dumps(
    source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if source == "environment":
        monkeypatch.setenv("AUTOAI_ADMIN_TOKEN", TOKEN)
        settings = ControlSettings()
    else:
        settings = ControlSettings(admin_token=TOKEN)
    assert isinstance(settings.admin_token, SecretStr)
    assert settings.admin_token.get_secret_value() == TOKEN
    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        assert TOKEN not in shown
    assert json.loads(settings.model_dump_json())["admin_token"] == "**********"
    assert not settings.exposed_without_token


def test_the_default_store_is_config_stores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTOAI_STORE_URL", raising=False)
    assert ControlSettings().store_url == default_store_url()
    monkeypatch.setenv("AUTOAI_STORE_URL", "zk://127.0.0.1:2181/autoai")
    assert ControlSettings().store_url == "zk://127.0.0.1:2181/autoai"
