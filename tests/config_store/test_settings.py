"""``StoreSettings`` of ``autoai-store``: frozen, the default store in one place."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from config_store import default_store_url, open_store
from config_store._settings import StoreSettings


def test_settings_are_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTOAI_STORE_URL", raising=False)
    settings = StoreSettings()
    assert settings.url == default_store_url()
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        settings.url = "sqlite:///elsewhere.db"  # type: ignore[misc]


def test_the_default_url_names_the_embedded_store_in_the_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    url = default_store_url()
    assert url == f"sqlite://{tmp_path / '.autoai' / 'store.db'}"
    (tmp_path / ".autoai").mkdir()
    with open_store(url, snapshot_dir=False) as store:
        store.publish("k", "{}", group="test")
    assert (tmp_path / ".autoai" / "store.db").is_file()
