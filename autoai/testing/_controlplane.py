"""``autoai up`` as a real process for tests, benchmarks and scripts: started on a free loopback
port, waited for (``/healthz``, bounded), stopped by its PID.

```python
with control_plane(tmp_path, token="t") as plane:      # embedded sqlite store in tmp_path
    with plane.client() as control:                    # a ControlClient with the token
        control.register_model("m", file=model_path)
```
The admin token travels in the environment (``AUTOAI_ADMIN_TOKEN``), never on the command line.
Instances the control plane starts run detached and outlive it: whoever deployed stops them
(``undeploy``, or ``kill_recorded_instances`` in tests).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from pydantic import SecretStr

from config_store import open_store

from ._ports import free_port
from ._process import cmdline, terminate
from ._wait import WaitTimeout, wait

if TYPE_CHECKING:  # imported where used: the process helpers beside this need no httpx
    from ..control import ControlClient
    from ..schema import Health

__all__ = [
    "ControlPlaneExited",
    "ControlPlaneProcess",
    "control_plane",
    "kill_recorded_instances",
]

_PORT_CLASH = "address already in use"
_STARTS = 3  # tries when the free port was taken before `autoai up` bound it


class ControlPlaneExited(RuntimeError):
    """``autoai up`` exited, or did not answer in time; the message ends with its log's tail."""


class ControlPlaneProcess:
    """One ``autoai up`` process, started by ``start`` and stopped by PID.

    Args:
        root: its directory: the model repository ``root/repo``, the instances' ``root/run``,
            the log, and the embedded store ``root/store.db`` unless ``store_url`` is given.
        store_url: the config store (``sqlite://...``, ``zk://...``).
        token: the admin token (``AUTOAI_ADMIN_TOKEN``); ``None``: an open control plane.
        port: the port to listen on; ``None``: a free one (retried on a clash).
        run_dir: ``--run-dir``; ``None``: ``root/run``; ``"default"``: no flag (``autoai up``'s
            own default under ``$HOME``).
        repo: ``--repo``; ``None``: ``root/repo``.
        env: variables added to this process's environment.
        log: where its output goes; ``None``: ``root/controlplane.log``.
        detach: a session of its own (``make demo``'s control plane outlives the script and its
            terminal's Ctrl-C).
        log_level: uvicorn's.
    """

    def __init__(
        self,
        root: Path,
        *,
        store_url: str | None = None,
        token: str | SecretStr | None = None,
        port: int | None = None,
        run_dir: Path | Literal["default"] | None = None,
        repo: Path | None = None,
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
        detach: bool = False,
        log_level: str = "warning",
    ):
        self.root = Path(root)
        self.store_url = store_url or f"sqlite://{self.root / 'store.db'}"
        self.token = token.get_secret_value() if isinstance(token, SecretStr) else token
        self._fixed_port = port
        self.port = port or 0
        self.run_dir: Path | None = (
            None if run_dir == "default" else Path(run_dir or self.root / "run")
        )
        self.repo = Path(repo or self.root / "repo")
        self.env = dict(env or {})
        self.log = Path(log or self.root / "controlplane.log")
        self.detach = detach
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def args(self) -> list[str]:
        """Its command line."""
        run = [] if self.run_dir is None else ["--run-dir", str(self.run_dir)]
        return [
            sys.executable, "-m", "autoai.cli", "up", "--host", "127.0.0.1",
            "--port", str(self.port), "--store", self.store_url, "--repo", str(self.repo),
            *run, "--log-level", self.log_level,
        ]  # fmt: skip

    def start(self, timeout: float = 60.0) -> ControlPlaneProcess:
        """``spawn`` it and ``wait_ready``; returns itself. Without a port of its own, a clash
        on the free port (taken before ``autoai up`` bound it) is tried again on another.

        Raises:
            ControlPlaneExited: it exited, or did not answer within ``timeout`` seconds (then
                it is stopped).
        """
        for attempt in range(1 if self._fixed_port else _STARTS):
            self.spawn()
            try:
                return self.wait_ready(timeout)
            except ControlPlaneExited as exc:
                clash = _PORT_CLASH in str(exc).lower()
                if not clash or self._fixed_port or attempt == _STARTS - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def spawn(self) -> None:
        """Start the process (on a free port unless one was given) without waiting for it."""
        if not self._fixed_port:
            self.port = free_port()
        environ = {**os.environ, **self.env}
        if self.token is not None:
            environ["AUTOAI_ADMIN_TOKEN"] = self.token
        self.root.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.args(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=environ, start_new_session=self.detach, cwd=self.root,
            )  # fmt: skip

    def wait_ready(self, timeout: float = 60.0) -> ControlPlaneProcess:
        """Wait (bounded) until ``/healthz`` answers; returns itself.

        Raises:
            ControlPlaneExited: it exited, or did not answer within ``timeout`` seconds (then
                it is stopped).
        """
        try:
            wait(lambda: self.health() is not None, timeout, f"autoai up on {self.url}")
        except WaitTimeout:
            self.stop(timeout=5)
            raise ControlPlaneExited(
                f"autoai up did not answer on {self.url} within {timeout:g} s; "
                f"log {self.log}:\n{self.log_tail()}"
            ) from None
        return self

    def client(self, *, timeout: float = 30.0, **options: Any) -> ControlClient:
        """A ``ControlClient`` of this control plane, with its token."""
        from ..control import ControlClient

        return ControlClient(self.url, token=self.token, timeout=timeout, **options)

    def health(self) -> Health | None:
        """``/healthz``'s answer; ``None`` while it does not answer.

        Raises:
            ControlPlaneExited: the process has exited.
        """
        from ..control import ControlError

        try:
            with self.client(timeout=5.0, trust_env=False) as control:
                return control.healthz()
        except ControlError:
            if self.proc is not None and self.proc.poll() is not None:
                raise ControlPlaneExited(
                    f"autoai up exited with {self.proc.returncode}; log {self.log}:\n"
                    f"{self.log_tail()}"
                ) from None
            return None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (SIGKILL after ``timeout`` seconds) and reap it; its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            terminate([self.proc.pid], timeout=timeout)
        return self.proc.wait(10)

    def kill(self) -> None:
        """SIGKILL, no drain (a crash)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def __enter__(self) -> ControlPlaneProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def control_plane(root: Path, **options: Any) -> Iterator[ControlPlaneProcess]:
    """A started ``ControlPlaneProcess`` (``options`` as its constructor's), stopped on exit."""
    plane = ControlPlaneProcess(root, **options)
    try:
        yield plane.start()
    finally:
        plane.stop()


def _recorded_pids(content: bytes) -> list[tuple[int, list[str]]]:
    """(pid, recorded command line) of each local instance of a deployment or pool record; a
    Kubernetes record's slots (pods) have no pid and are skipped."""
    return [
        (int(slot["pid"]), [str(a) for a in slot.get("args") or []])
        for slot in json.loads(content).get("instances") or []
        if isinstance(slot, dict) and slot.get("pid")
    ]


def kill_recorded_instances(store_url: str) -> list[int]:
    """SIGKILL every instance the deployment records (``deployment.*``) and pool records
    (``pool.*``: a pool's multi-model instances) of this store name: what a test deployed and
    left running, pools included, even when the test never deleted them. Recorded PIDs only,
    and of a record with a command line only while that PID still runs it (a PID reused by
    another process since is left alone). Returns the PIDs signalled."""
    killed = []
    with open_store(store_url, snapshot_dir=False) as store:
        for key in store.keys("control"):
            if not key.startswith(("deployment.", "pool.")):
                continue
            item = store.get(key, group="control")
            if item is None:
                continue
            for pid, args in _recorded_pids(item.content):
                running = cmdline(pid)
                if not running or (args and running != " ".join(args)):
                    continue  # gone, or a reused PID
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
    return killed
