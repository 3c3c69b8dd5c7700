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
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from autoai.orchestrators import process_alive

__all__ = ["ControlPlane", "admin_token", "start", "stop_previous"]


@dataclass(frozen=True)
class ControlPlane:
    """A started control plane."""

    pid: int
    url: str
    run_dir: Path
    store_url: str
    log: Path


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _terminate(pids: Iterable[int], timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout``: only the PIDs given."""
    pids = [p for p in pids if process_alive(p)]
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(process_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if process_alive(pid):
            os.kill(pid, signal.SIGKILL)


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
    if pid and process_alive(pid) and run_dir in _cmdline(pid):
        headers = {"Authorization": f"Bearer {token}"}
        try:
            with httpx.Client(base_url=state["url"], headers=headers, timeout=90) as api:
                for d in api.get("/api/v1/deployments").raise_for_status().json()["deployments"]:
                    instances.update(i["pid"] for i in d["instances"])
                    answer = api.delete(
                        f"/api/v1/models/{d['name']}/versions/{d['version']}/deploy",
                        params={"force": "true"},
                    )
                    what = f"{d['name']} version {d['version']}"
                    said.append(
                        f"undeployed {what} (REST)"
                        if answer.is_success
                        else f"undeploy {what}: {answer.status_code} {answer.text}"
                    )
        except httpx.HTTPError as exc:
            said.append(f"could not undeploy through REST ({exc}); stopping instances by PID")
        _terminate([pid], timeout=15)
        said.append(f"stopped the previous control plane (pid {pid})")
    left = [p for p in instances if process_alive(p) and run_dir in _cmdline(p)]
    if left:
        _terminate(left, timeout=40)
        said.append(f"stopped instances {sorted(left)} by PID")
    for old in sorted(home.glob("run-*")):
        shutil.rmtree(old, ignore_errors=True)
    for name in ("state.json", "controlplane.pid"):
        (home / name).unlink(missing_ok=True)
    return said


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port free now (it could be taken before ``autoai up`` binds it: then start fails and
    says so)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(home: Path, port: int, token: str, store_url: str | None = None) -> ControlPlane:
    """Start ``autoai up`` in its own session on 127.0.0.1:``port``, on a fresh run directory,
    and wait for ``/healthz``. ``store_url``: default, an embedded store in the run directory.

    Raises:
        SystemExit: it exited or did not answer within 60 s (with its log's last lines).
    """
    run_dir = home / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True)
    store_url = store_url or f"sqlite://{run_dir / 'store.db'}"
    log = run_dir / "controlplane.log"
    args = [
        sys.executable, "-m", "autoai.cli", "up", "--port", str(port), "--store", store_url,
        "--repo", str(run_dir / "repo"), "--run-dir", str(run_dir / "instances"),
        "--log-level", "warning",
    ]  # fmt: skip
    env = {**os.environ, "AUTOAI_ADMIN_TOKEN": token}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True, cwd=run_dir,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    cp = ControlPlane(proc.pid, url, run_dir, store_url, log)
    save_state(home, cp, [])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise SystemExit(f"autoai up exited with {proc.returncode}:\n{tail}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return cp
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    _terminate([proc.pid], timeout=5)
    raise SystemExit(f"autoai up did not answer on {url} within 60 s; log: {log}")


def save_state(home: Path, cp: ControlPlane, instances: list[int]) -> None:
    (home / "controlplane.pid").write_text(f"{cp.pid}\n")
    state = {"pid": cp.pid, "url": cp.url, "run_dir": str(cp.run_dir), "instances": instances}
    (home / "state.json").write_text(json.dumps(state, indent=2))
