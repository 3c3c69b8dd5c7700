"""The demo's control plane: start ``autoai up`` detached, find and stop the previous one.

State lives in the demo directory (``~/.autoai/demo`` by default):

- ``controlplane.pid``: the PID of the running ``autoai up``;
- ``state.json``: its URL, run directory and the PIDs of the instances it started;
- ``token``: the admin token (mode 0600) when ``AUTOAI_ADMIN_TOKEN`` was not set;
- ``run-<time>/``: one run's store, model repository, instances' configs and logs.

A PID is only signalled when its command line names this demo's run directory, so a PID reused by
another process is never touched.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoai.control import ControlClient, ControlError, Unreachable
from autoai.schema import LocalInstanceHealth
from autoai.testing import ControlPlaneExited, ControlPlaneProcess, alive, cmdline, terminate

__all__ = ["ControlPlane", "admin_token", "start", "stop_previous"]


@dataclass(frozen=True)
class ControlPlane:
    """A started control plane."""

    pid: int
    url: str
    run_dir: Path
    store_url: str
    log: Path


def admin_token(home: Path) -> tuple[str, str]:
    """The admin token and where it comes from: ``AUTOAI_ADMIN_TOKEN``, else a file of the demo
    directory (made once, mode 0600, reused by later runs)."""
    token = os.environ.get("AUTOAI_ADMIN_TOKEN")
    if token:
        return token, "AUTOAI_ADMIN_TOKEN"
    path = home / "token"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(24))
    return path.read_text().strip(), str(path)


def stop_previous(home: Path, token: str) -> list[str]:
    """Stop the previous demo's control plane and instances, and remove its run directories.

    Instances are undeployed through REST first (drained by the control plane); whatever still
    runs afterwards, or was recorded while the control plane is gone, is stopped by PID.

    Returns:
        What was done, one line each.
    """
    said: list[str] = []
    state_file = home / "state.json"
    state: dict[str, Any] = json.loads(state_file.read_text()) if state_file.exists() else {}
    run_dir = str(state.get("run_dir", "//nothing//"))
    instances = {int(p) for p in state.get("instances", [])}
    pid = int(state.get("pid", 0))
    if pid and alive(pid) and run_dir in cmdline(pid):
        try:
            with ControlClient(state["url"], token=token, timeout=90) as control:
                for d in control.deployments():
                    local = (i for i in d.instances if isinstance(i, LocalInstanceHealth))
                    instances.update(i.pid for i in local)
                    what = f"{d.name} version {d.version}"
                    try:
                        control.undeploy(d.name, d.version, force=True)
                        said.append(f"undeployed {what} (REST)")
                    except Unreachable:
                        raise
                    except ControlError as exc:
                        said.append(f"undeploy {what}: {exc}")
        except ControlError as exc:
            said.append(f"could not undeploy through REST ({exc}); stopping instances by PID")
        terminate([pid], timeout=15, mark=run_dir)
        said.append(f"stopped the previous control plane (pid {pid})")
    left = [p for p in instances if alive(p) and run_dir in cmdline(p)]
    if left:
        terminate(left, timeout=40, mark=run_dir)
        said.append(f"stopped instances {sorted(left)} by PID")
    for old in sorted(home.glob("run-*")):
        shutil.rmtree(old, ignore_errors=True)
    for name in ("state.json", "controlplane.pid"):
        (home / name).unlink(missing_ok=True)
    return said


def start(home: Path, port: int, token: str, store_url: str | None = None) -> ControlPlane:
    """Start ``autoai up`` in its own session on 127.0.0.1:``port``, on a fresh run directory,
    and wait for ``/healthz`` (``autoai.testing.ControlPlaneProcess``). ``store_url``: default,
    an embedded store in the run directory.

    Raises:
        SystemExit: it exited or did not answer within 60 s (with its log's last lines).
    """
    run_dir = home / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True)
    plane = ControlPlaneProcess(
        run_dir,
        store_url=store_url,
        token=token,
        port=port,
        run_dir=run_dir / "instances",
        detach=True,
    )
    plane.spawn()
    cp = ControlPlane(plane.pid, plane.url, run_dir, plane.store_url, plane.log)
    save_state(home, cp, [])  # a --stop finds it even while it starts
    try:
        plane.wait_ready(timeout=60)
    except ControlPlaneExited as exc:
        raise SystemExit(str(exc)) from None
    return cp


def save_state(home: Path, cp: ControlPlane, instances: list[int]) -> None:
    (home / "controlplane.pid").write_text(f"{cp.pid}\n")
    state = {"pid": cp.pid, "url": cp.url, "run_dir": str(cp.run_dir), "instances": instances}
    (home / "state.json").write_text(json.dumps(state, indent=2))
