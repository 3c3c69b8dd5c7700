"""Starting each kind of server, checking one answer (HTTP or gRPC), reading a server's own
inference counts, and waiting until the servers are idle."""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from autoai.testing import machine_busy_seconds, tree_cpu_seconds

from . import bodies, mlserver_peer
from .grpc_load import Counts
from .servers import Server, ServerStartError, start_listening

HERE = Path(__file__).resolve().parent
SERVERS = ("naive", "ours", "mlserver")
FORMATS = (*bodies.FORMATS, "grpc")
GRPC_SERVERS = ("ours", "mlserver")  # the naive server speaks HTTP only
# eas-server's defaults, given to MLServer as its batching knobs (ours runs with its defaults).
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


def start(
    kind: str, model: Path, name: str, workdir: Path, threads: int, grpc: bool = False
) -> Server:
    """Start server `kind` for `model` (ours with its gRPC front end too when `grpc`); raises
    Skip when it cannot run here.

    Ours runs with its defaults, as users start it: no batching or threading flags.
    """
    log = workdir / f"{kind}-{name}.log"
    try:
        if kind == "naive":
            cmd = [sys.executable, str(HERE / "naive_server.py"), "--model", str(model)]
            return start_listening(kind, [*cmd, "--name", name, "--port", "0"], log)
        if kind == "ours":
            cmd = [*eas_server_command(), "--model", str(model), "--name", name]
            cmd += ["--host", "127.0.0.1", "--port", "0"]
            if grpc:
                cmd += ["--grpc-port", "0"]
            return start_listening(kind, cmd, log, grpc=grpc)
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
    _compare(got, expected, tolerance)


def _compare(got: npt.NDArray[Any], expected: npt.NDArray[Any], tolerance: float) -> None:
    if got.shape != expected.shape:
        raise Skip(f"probe answer differs: shape {got.shape}, expected {expected.shape}")
    diff = float(np.abs(got.astype(np.float64) - expected).max())
    if diff > tolerance:
        raise Skip(f"probe answer differs: max abs diff {diff:.3g}")


def probe_grpc(
    server: Server,
    name: str,
    inputs: Mapping[str, npt.NDArray[Any]],
    output: str,
    expected: npt.NDArray[Any],
    tolerance: float = 1e-3,
) -> None:
    """One `ModelInfer` call with tritonclient's gRPC client (raw input contents, as h2load
    sends); Skip unless its status is OK and `output` matches `expected`."""
    if not server.grpc:
        raise Skip(f"{server.name} serves no gRPC here")
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(server.grpc)
    try:
        tensors = []
        for key, array in inputs.items():
            tensor = grpcclient.InferInput(
                key, list(array.shape), bodies.OIP_DTYPES[array.dtype.name]
            )
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        wanted = [grpcclient.InferRequestedOutput(output)]
        result = client.infer(name, tensors, outputs=wanted, client_timeout=30)
        got = result.as_numpy(output)
    except InferenceServerException as exc:
        raise Skip(f"gRPC probe failed: {exc}") from exc
    finally:
        client.close()
    if got is None:
        raise Skip(f"gRPC probe answer has no {output!r}")
    _compare(np.asarray(got), expected, tolerance)


_METRIC = re.compile(r"^(model_infer_request_(?:success|failure))_total\{([^}]*)\} (\S+)$", re.M)


def inference_counts(server: Server, name: str) -> Counts:
    """`server`'s own counts of successful and failed inferences of model `name` (both
    protocols): Triton's statistics extension for ours, the Prometheus counters of MLServer.

    Raises:
        Skip: the server keeps no such counts, or they cannot be read.
    """
    try:
        if server.name == "ours":
            url = f"{server.url}/v2/models/{name}/stats"
            with urllib.request.urlopen(url, timeout=10) as response:
                stats = json.loads(response.read())["model_stats"][0]["inference_stats"]
            return Counts(int(stats["success"]["count"]), int(stats["fail"]["count"]))
        if server.metrics:
            with urllib.request.urlopen(server.metrics, timeout=10) as response:
                text = response.read().decode()
            found = {"model_infer_request_success": 0.0, "model_infer_request_failure": 0.0}
            for metric, labels, value in _METRIC.findall(text):
                if f'model="{name}"' in labels:
                    found[metric] += float(value)
            return Counts(
                int(found["model_infer_request_success"]),
                int(found["model_infer_request_failure"]),
            )
    except (OSError, KeyError, IndexError, ValueError) as exc:
        raise Skip(f"cannot read {server.name}'s inference counts: {exc!r}") from exc
    raise Skip(f"{server.name} keeps no inference counts to check gRPC answers against")


def wait_quiet(
    servers: Sequence[Server],
    threshold: float = 0.1,
    window_s: float = 0.5,
    timeout_s: float = 300.0,
) -> bool:
    """Wait until the machine, apart from this process, uses under `threshold` cores over
    `window_s`: the servers (idle now) and whatever else runs here.

    Called after every load run (once the loaded server has answered one more request, which
    queues behind whatever wrk left in it): the next run, or the in-process ceiling, must not
    share the CPU with a server still working off its queue, nor with other work on this
    machine. False (and a warning) when it is still busy after `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    waited = False
    while True:
        machine, own = machine_busy_seconds(), time.process_time()
        in_servers = sum(tree_cpu_seconds(s.pid) for s in servers)
        time.sleep(window_s)
        busy = (machine_busy_seconds() - machine - (time.process_time() - own)) / window_s
        if busy < threshold:
            return True
        if not waited and time.monotonic() > deadline - timeout_s + 5:  # a short wait is normal
            waited = True
            print(f"waiting  for a quiet machine ({busy:.2f} cores busy)")
        if time.monotonic() > deadline:
            in_servers = sum(tree_cpu_seconds(s.pid) for s in servers) - in_servers
            print(
                f"warning: still {busy:.2f} cores busy after {timeout_s:.0f} s"
                f" ({in_servers / window_s:.2f} in the servers): going on"
            )
            return False
