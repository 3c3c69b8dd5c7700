"""Where the example and benchmark models are kept: the one rule ``scripts/build_models.py``
writes by, and every script and benchmark reads by."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["cache_dir", "models_dir"]


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$AUTOAI_CACHE``, else ``~/.cache/autoai`` (read when called, so a test's ``HOME`` or
    ``AUTOAI_CACHE`` counts)."""
    env = os.environ if environ is None else environ
    cache = env.get("AUTOAI_CACHE")
    if cache:
        return Path(cache)
    home = env.get("HOME")
    return (Path(home) if home else Path.home()) / ".cache" / "autoai"


def models_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$AUTOAI_CACHE/models``, else ``~/.cache/autoai/models``: what ``make models`` builds."""
    return cache_dir(environ) / "models"
