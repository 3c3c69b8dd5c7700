"""``autoai up`` as a process (``autoai.testing.ControlPlaneProcess`` and the plugin's fixtures):
started on a free port and waited for, its token kept off the command line, stopped by PID, and
a start that cannot bind its port reported with the log."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest

from autoai.control import ControlClient, Unauthorized, Unreachable
from autoai.testing import (
    ControlPlaneExited,
    ControlPlaneProcess,
    alive,
    cmdline,
    control_plane,
    free_port,
)
from autoai.testing.plugin import ADMIN_TOKEN

pytestmark = pytest.mark.slow


def test_the_plugin_s_control_plane_and_client(
    autoai_control_plane: ControlPlaneProcess, autoai_control: ControlClient
) -> None:
    health = autoai_control.healthz()
    assert health.status == "ok" and health.leader_url == autoai_control_plane.url
    argv = cmdline(autoai_control_plane.pid)
    assert "autoai.cli up" in argv and ADMIN_TOKEN not in argv  # the token is in the environment
    with ControlClient(autoai_control_plane.url) as anonymous, pytest.raises(Unauthorized):
        anonymous.deploy("m", "1", {})


def test_stopped_by_pid_on_exit(tmp_path: Path) -> None:
    with control_plane(tmp_path, token="t") as plane:
        pid = plane.pid
        assert plane.health() is not None and plane.running()
        assert plane.log == tmp_path / "controlplane.log"
    assert not alive(pid) and not plane.running()
    # SIGTERM, not SIGKILL: uvicorn shuts down and exits by the signal it got (or 0)
    assert plane.proc is not None and plane.proc.returncode in (0, -signal.SIGTERM)
    with plane.client(timeout=2) as control, pytest.raises(Unreachable):
        control.healthz()


def test_a_port_it_cannot_bind_ends_the_start_with_its_log(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        plane = ControlPlaneProcess(tmp_path, port=port)
        with pytest.raises(ControlPlaneExited, match=r"(?is)exited with .*address already in use"):
            plane.start(timeout=60)
    assert not plane.running()
