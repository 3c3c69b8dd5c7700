"""Server processes of the benchmark: started on 127.0.0.1, stopped by the PID we got.

Each server runs in a session of its own (`start_new_session`), so that a server which ignores
SIGTERM can be killed with the process group it created (MLServer's inference workers are its
children); nothing else is ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LISTENING = re.compile(r"listening on (http://[\w.\-\[\]:]+:\d+)")
GRPC_LISTENING = re.compile(r"grpc listening on ([\w.\-\[\]:]+:\d+)")


class ServerStartError(RuntimeError):
    """A server exited, or was not ready in time; the message carries the end of its log."""


@dataclass
class Server:
    """A started server process; `url` is its base URL (`http://127.0.0.1:PORT`), `grpc` the
    `HOST:PORT` of its KServe v2 gRPC service ("" without one), `metrics` the URL of its
    Prometheus metrics when they are served apart from `url` (MLServer)."""

    name: str
    proc: subprocess.Popen[str]
    url: str
    log: Path
    _drain: threading.Thread | None = field(default=None, repr=False)
    grpc: str = ""
    metrics: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM, then after `grace_s` SIGKILL to the process group this server leads."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        if self._drain is not None:
            self._drain.join(timeout=5)


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def _spawn(
    cmd: Sequence[str], env: Mapping[str, str] | None, cwd: Path | None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        start_new_session=True,
    )


def start_listening(
    name: str,
    cmd: Sequence[str],
    log: Path,
    timeout_s: float = 120.0,
    env: Mapping[str, str] | None = None,
    *,
    grpc: bool = False,
) -> Server:
    """Start `cmd` and wait until it prints `listening on http://HOST:PORT` (and, with `grpc`,
    `grpc listening on HOST:PORT` too)."""
    proc = _spawn(cmd, env, None)
    found: dict[str, str] = {}
    ready = threading.Event()
    patterns = {"http": LISTENING, **({"grpc": GRPC_LISTENING} if grpc else {})}

    def drain() -> None:
        assert proc.stdout is not None
        with log.open("w", encoding="utf-8") as out:
            for line in proc.stdout:
                out.write(line)
                out.flush()
                for key, pattern in patterns.items():
                    match = pattern.search(line)
                    if match and key not in found:
                        found[key] = match.group(1)
                if len(found) == len(patterns):
                    ready.set()
        ready.set()  # EOF: the process is gone

    thread = threading.Thread(target=drain, name=f"{name}-log", daemon=True)
    thread.start()
    server = Server(name, proc, "", log, thread)
    if not ready.wait(timeout_s) or len(found) < len(patterns):
        server.stop(grace_s=5)
        why = f"exited with {proc.returncode}" if proc.returncode is not None else "timed out"
        raise ServerStartError(f"{name} {why} before listening:\n{_tail(log)}")
    server.url = found["http"]
    server.grpc = found.get("grpc", "")
    return server


def start_polling(
    name: str,
    cmd: Sequence[str],
    url: str,
    ready_path: str,
    log: Path,
    timeout_s: float = 180.0,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Server:
    """Start `cmd` (serving at `url`) and poll `url + ready_path` until it answers 200."""
    proc = _spawn(cmd, env, cwd)

    def drain() -> None:
        assert proc.stdout is not None
        with log.open("w", encoding="utf-8") as out:
            for line in proc.stdout:
                out.write(line)

    thread = threading.Thread(target=drain, name=f"{name}-log", daemon=True)
    thread.start()
    server = Server(name, proc, url, log, thread)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url + ready_path, timeout=2) as response:
                if response.status == 200:
                    return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    server.stop(grace_s=5)
    why = f"exited with {proc.returncode}" if proc.returncode is not None else "timed out"
    raise ServerStartError(f"{name} {why} before {ready_path} answered 200:\n{_tail(log)}")
