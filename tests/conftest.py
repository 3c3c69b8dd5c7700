"""Shared test setup: real ZooKeeper fixtures, the control plane as a process, and a HOME of the
test's own so that nothing is read from or written to the developer's ~/.autoai."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = [
    "config_store.testing.plugin",
    "autoai.testing.plugin",
    "tests.fixtures.servers",
    "tests.fixtures.whisper",
]


@pytest.fixture(autouse=True)
def _isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for var in ("AUTOAI_STORE_URL", "AUTOAI_URL", "AUTOAI_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    return home
