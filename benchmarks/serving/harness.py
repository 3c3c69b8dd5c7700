"""Starting each kind of server, checking one answer, and loading it at each concurrency."""

from __future__ import annotations

import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from serving import bodies, loadgen, mlserver_peer
from serving.report import Row
from serving.servers import Server, ServerStartError, start_listening

HERE = Path(__file__).resolve().parent
SERVERS = ("naive", "ours", "mlserver")
MAX_BATCH_SIZE = 32
MAX_BATCH_TIMEOUT_MS = 5


class Skip(Exception):
    """This server or row cannot be measured here; the message says why."""


def eas_server_command() -> list[str]:
    """`eas-server` next to this interpreter (the project venv), else on PATH."""
    local = Path(sys.executable).parent / "eas-server"
    found = str(local) if local.exists() else shutil.which("eas-server")
    if not found:
        raise Skip("the `eas-server` command is not installed (pip install -e '.[server]')")
    return [found]


def start(kind: str, model: Path, name: str, workdir: Path, threads: int) -> Server:
    """Start server `kind` for `model`; raises Skip when it cannot run here."""
    log = workdir / f"{kind}-{name}.log"
    try:
        if kind == "naive":
            cmd = [sys.executable, str(HERE / "naive_server.py"), "--model", str(model)]
            return start_listening(kind, [*cmd, "--name", name, "--port", "0"], log)
        if kind == "ours":
            cmd = [*eas_server_command(), "--model", str(model), "--name", name]
            cmd += ["--host", "127.0.0.1", "--port", "0"]
            cmd += ["--max-batch-size", str(MAX_BATCH_SIZE)]
            cmd += ["--max-batch-timeout-ms", str(MAX_BATCH_TIMEOUT_MS)]
            return start_listening(kind, cmd, log)
        if kind == "mlserver":
            return mlserver_peer.start(
                model, name, workdir, threads, MAX_BATCH_SIZE, MAX_BATCH_TIMEOUT_MS / 1e3, log
            )
    except ServerStartError as exc:
        raise Skip(str(exc)) from exc
    raise ValueError(f"unknown server {kind!r}; expected one of {SERVERS}")


def probe(
    server: Server,
    name: str,
    body: bodies.Body,
    output: str,
    expected: npt.NDArray[Any],
    tolerance: float = 1e-3,
) -> None:
    """POST one body; Skip unless the answer is 200 and `output` matches `expected`."""
    url = f"{server.url}/v2/models/{name}/infer"
    request = urllib.request.Request(url, data=body.data, headers=body.headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            data, headers = response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:200].decode(errors="replace")
        raise Skip(f"probe answered {exc.code}: {detail}") from exc
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        raise Skip(f"probe failed: {exc}") from exc
    try:
        got = bodies.decode(data, headers)[output]
    except (KeyError, ValueError) as exc:
        raise Skip(f"probe answer could not be decoded: {exc!r}: {data[:200]!r}") from exc
    diff = float(np.abs(got.astype(np.float64) - expected).max())
    if got.shape != expected.shape or diff > tolerance:
        raise Skip(f"probe answer differs: shape {got.shape}, max abs diff {diff:.3g}")


def load_row(
    row: Row,
    server: Server,
    url: str,
    script: Path,
    concurrencies: Sequence[int],
    duration_s: float,
    warmup_s: float,
    wrk: str,
    settle: Callable[[], None],
) -> None:
    """Warm up, then one wrk run per concurrency; results go into `row.points`.

    `settle` (one blocking request) runs before each measured run: when wrk stops, up to
    `concurrency` requests are still queued in the server, and the next run must not start
    behind them.
    """
    if warmup_s > 0:
        loadgen.run(wrk, url, script, max(concurrencies), warmup_s, server.pid)
    for c in concurrencies:
        if server.proc.poll() is not None:
            row.note = f"server exited with {server.proc.returncode} during the run"
            return
        settle()
        result = loadgen.run(wrk, url, script, c, duration_s, server.pid)
        row.points[c] = result
        failed = result.non_2xx + result.socket_errors
        print(
            f"  {row.server:8} {row.fmt:6} c={c:<3} {result.rps:8.0f} req/s"
            f"  p50 {result.p50 * 1e3:7.2f} ms  p99 {result.p99 * 1e3:7.2f} ms"
            f"  cores: wrk {result.wrk_cpu:.2f} server {result.server_cpu:.2f}"
            f" other {result.other_cpu:.2f}" + (f"  FAILED {failed}" if failed else "")
        )
