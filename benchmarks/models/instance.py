"""eas-server processes of the benchmark, and what is read from them: the memory of their process
trees (RSS, and PSS where psutil gives it), the RSS of a repository instance after each model it
loaded at start, the repository API's load and unload, `/metrics` and one checked answer.

Every server runs in a session of its own on 127.0.0.1 with `--port 0` and is stopped by its PID
(`autoai.testing.terminate`); nothing else is signalled.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psutil

from autoai.testing import terminate, tree_pids
from benchmarks.serving import bodies
from benchmarks.serving.servers import LISTENING, Server, ServerStartError

from .traffic import OUTPUT, Tensors

__all__ = [
    "Memory",
    "Started",
    "batch_totals",
    "check",
    "memory",
    "post",
    "start",
    "stop",
]

_LOADED = re.compile(r"eas_server\.repository INFO loaded (\S+) version")
_BATCH = re.compile(r"^eas_batch_size_(sum|count)\{[^}]*\} (\S+)$", re.M)


@dataclass(frozen=True)
class Memory:
    """A process tree's memory at one moment, in bytes (PSS: None where it cannot be read)."""

    rss: int
    pss: int | None


def memory(pid: int) -> Memory:
    """RSS and PSS summed over ``pid``'s process tree (a server's front ends, if any)."""
    rss, pss = 0, 0
    pss_known = True
    for p in tree_pids(pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
            proc = psutil.Process(p)
            try:
                full = proc.memory_full_info()  # PSS: reads smaps, needs the same user or root
                rss += full.rss
                pss += getattr(full, "pss", 0)
                pss_known = pss_known and hasattr(full, "pss")
            except psutil.AccessDenied:
                rss += proc.memory_info().rss
                pss_known = False
    return Memory(rss, pss if pss_known else None)


def _rss(pid: int) -> int:
    """RSS of ``pid`` alone, quickly (no smaps): read right after each model it loaded."""
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return 0


@dataclass
class Started:
    """A started server: its process, the seconds from spawn to ``listening on``, and for a
    repository instance the (models loaded, RSS bytes) after each model it loaded at start."""

    server: Server
    start_s: float
    loaded: list[tuple[int, int]] = field(default_factory=list)


def server_command() -> list[str]:
    """`eas-server` next to this interpreter (the project venv), else ``python -m eas_server``."""
    local = Path(sys.executable).parent / "eas-server"
    return [str(local)] if local.exists() else [sys.executable, "-m", "eas_server"]


def start(name: str, args: Sequence[str], log: Path, timeout_s: float = 600.0) -> Started:
    """Start ``eas-server ARGS --host 127.0.0.1 --port 0 -v`` and wait for ``listening on``.

    While it starts, each ``loaded NAME version`` line of its log (a repository instance loads
    its models one at a time) is followed by a reading of its RSS.

    Raises:
        ServerStartError: it exited, or did not listen within ``timeout_s``.
    """
    cmd = [*server_command(), *args, "--host", "127.0.0.1", "--port", "0", "-v"]
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    url: list[str] = []
    loaded: list[tuple[int, int]] = []
    ready = threading.Event()
    listen_s: list[float] = []

    def drain() -> None:
        assert proc.stdout is not None
        with log.open("w", encoding="utf-8") as out:
            for line in proc.stdout:
                if not url and _LOADED.search(line):
                    loaded.append((len(loaded) + 1, _rss(proc.pid)))
                out.write(line)
                out.flush()
                match = LISTENING.search(line)
                if match and not url:
                    listen_s.append(time.perf_counter() - started)
                    url.append(match.group(1))
                    ready.set()
        ready.set()  # EOF: the process is gone

    thread = threading.Thread(target=drain, name=f"{name}-log", daemon=True)
    thread.start()
    server = Server(name, proc, "", log, thread)
    if not ready.wait(timeout_s) or not url:
        stop([server])
        why = f"exited with {proc.returncode}" if proc.returncode is not None else "timed out"
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise ServerStartError(f"{name} {why} before listening:\n{tail}")
    server.url = url[0]
    return Started(server, listen_s[0], loaded)


def stop(servers: Sequence[Server], timeout_s: float = 30.0) -> None:
    """SIGTERM the servers' process trees (by PID), SIGKILL what still runs after
    ``timeout_s``, and reap them."""
    pids: set[int] = set()
    for s in servers:
        pids |= tree_pids(s.pid)
    terminate(pids, timeout=timeout_s)
    for s in servers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            s.proc.wait(timeout=5)
        if s._drain is not None:
            s._drain.join(timeout=5)


def post(url: str, body: dict[str, Any] | None = None, timeout_s: float = 120.0) -> Any:
    """POST JSON (or nothing) and return the decoded JSON answer.

    Raises:
        RuntimeError: a status other than 200 (with the server's message), or no answer.
    """
    data = json.dumps(body).encode() if body is not None else b""
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"POST {url} answered {exc.code}: {exc.read()[:300]!r}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise RuntimeError(f"POST {url} failed: {exc}") from exc


def get_text(url: str, timeout_s: float = 30.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return str(response.read().decode())


def batch_totals(url: str) -> tuple[float, float]:
    """(rows, runtime calls) of every model so far: ``eas_batch_size``'s sum and count in the
    server's ``/metrics``, over all its series."""
    totals = {"sum": 0.0, "count": 0.0}
    for kind, value in _BATCH.findall(get_text(f"{url}/metrics")):
        totals[kind] += float(value)
    return totals["sum"], totals["count"]


def check(url: str, name: str, row: Tensors, expected: npt.NDArray[Any] | None) -> npt.NDArray[Any]:
    """One request to model ``name``; its ``sentence_embedding`` (within 1e-3 of ``expected``
    when given).

    Raises:
        RuntimeError: not a 200, or a different answer.
    """
    body = bodies.encode(row, [OUTPUT], "binary")
    request = urllib.request.Request(
        f"{url}/v2/models/{name}/infer", data=body.data, headers=body.headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            got = bodies.decode(response.read(), dict(response.headers))[OUTPUT]
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{name} answered {exc.code}: {exc.read()[:300]!r}") from exc
    if expected is not None:
        diff = float(np.abs(got.astype(np.float64) - expected).max())
        if got.shape != expected.shape or diff > 1e-3:
            raise RuntimeError(f"{name} answered {got.shape}, max abs diff {diff:.3g} to ours")
    return got
