"""Everything a package exports is deliberate (httpx's test_all_imports_are_exported)."""

from __future__ import annotations

import importlib
import types

import pytest

PACKAGES = [
    "config_store",
    "eas_client",
    "eas_server",
    "eas_server.pipeline",
    "blade",
    "blade_client",
    "blade_aspect",
    "autoai.sdk",
    "autoai.api",
    "autoai.repository",
    "autoai.schema",
    "autoai.control",
    "autoai.testing",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_public_names_are_in_dunder_all(name: str) -> None:
    module = importlib.import_module(name)
    public = {
        n
        for n, v in vars(module).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType)
    }
    assert public == set(module.__all__), f"{name}: exported but not in __all__ (or vice versa)"
