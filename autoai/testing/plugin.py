"""pytest fixtures of the control plane as a real process.

Load with ``pytest_plugins = ["autoai.testing.plugin"]``. Fixtures:

- ``autoai_control_plane``: ``autoai up`` of the test's own (embedded sqlite store in a temporary
  directory, admin token ``ADMIN_TOKEN``); at the end it is stopped by PID and every instance its
  store records is killed.
- ``autoai_control``: a ``ControlClient`` of that control plane, with the token.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

import pytest

from ._controlplane import ControlPlaneProcess, kill_recorded_instances

if TYPE_CHECKING:  # the client (httpx, the API's schema) is imported by the fixture that uses it
    from ..control import ControlClient

__all__ = ["ADMIN_TOKEN", "autoai_control", "autoai_control_plane"]

ADMIN_TOKEN: Final = "autoai-testing-admin-token"


@pytest.fixture
def autoai_control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    root = tmp_path_factory.mktemp("control-plane")
    plane = ControlPlaneProcess(root, token=ADMIN_TOKEN, env={"HOME": str(root)})
    try:
        yield plane.start()
    finally:
        plane.stop()
        kill_recorded_instances(plane.store_url)


@pytest.fixture
def autoai_control(autoai_control_plane: ControlPlaneProcess) -> Iterator[ControlClient]:
    with autoai_control_plane.client() as control:
        yield control


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On failure, attach the tail of the log of every control plane the test used."""
    report = yield
    if report.failed and call.when == "call":  # type: ignore[attr-defined]
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, ControlPlaneProcess):
                report.sections.append((f"autoai up {value.url}", value.log_tail(40)))  # type: ignore[attr-defined]
    return report
