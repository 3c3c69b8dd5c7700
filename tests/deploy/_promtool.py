"""Find and run promtool (``make promtool`` puts Debian's into ~/.cache/autoai/bin); tests that
need it skip, saying how to get it, when it is missing."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["REPO", "promtool", "run_promtool"]

REPO = Path(__file__).resolve().parents[2]

# Read at import, before tests/conftest.py points HOME at a temporary directory; the passwd entry
# covers a HOME that was already changed.
_HOMES = (Path(os.path.expanduser("~")), Path(pwd.getpwuid(os.getuid()).pw_dir))


def promtool() -> str:
    """The promtool on PATH or in ~/.cache/autoai/bin; skips the calling test when neither."""
    found = shutil.which("promtool")
    if found:
        return found
    for home in _HOMES:
        candidate = home / ".cache" / "autoai" / "bin" / "promtool"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.skip(
        "promtool is neither on PATH nor in ~/.cache/autoai/bin; `make promtool` extracts it from "
        "Debian's prometheus package (apt-get download, no daemon)"
    )


def run_promtool(
    *args: str, input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run promtool from the repository root (``input`` on its stdin); output captured, exit
    status not checked."""
    return subprocess.run(
        [promtool(), *args], cwd=REPO, input=input, capture_output=True, text=True, timeout=timeout
    )
