"""The batching peer: MLServer with adaptive batching, in a virtual environment of its own.

Why MLServer: it is the Open Inference Protocol server of Seldon and KServe, it batches
(`max_batch_size`, `max_batch_time`) and it installs from PyPI on this machine. PyTriton
(`nvidia-pytriton` 0.7.0) installs too, but its Python backend stub failed to load any model
here (`'_thread.RLock' object has no attribute '_recursion_count'` in the bundled stub's
multiprocessing), so it is not used.

MLServer runs with its defaults otherwise: one inference worker process (`parallel_workers` 1)
behind its FastAPI front end, ORT with intra-op threads = cores, `max_batch_size` 32 and
`max_batch_time` 5 ms (the same knobs as ours). Its REST API has no binary tensor extension, so
its binary row is reported as unsupported (the probe request fails). It serves KServe v2 gRPC on
a port of its own (`grpc_port`) and counts successful and failed inferences, of both protocols,
in `model_infer_request_success` / `_failure` on its metrics port: the gRPC rows check h2load's
answers against those counts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort

from autoai.testing import free_port

from .servers import Server, start_polling

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv-mlserver"
# uvloop 0.22 made get_event_loop() raise outside a running loop, which kills MLServer 1.7.1's
# inference workers at start ("There is no current event loop"); 0.21 is the last that works.
PACKAGES = ["mlserver==1.7.1", f"onnxruntime=={ort.__version__}", "uvloop==0.21.0"]


def ensure_venv(venv: Path = VENV) -> Path:
    """The `mlserver` executable of `venv`, creating the venv and installing it when missing."""
    exe = venv / "bin" / "mlserver"
    marker = venv / "installed.json"
    if exe.exists() and marker.exists() and json.loads(marker.read_text()) == PACKAGES:
        return exe
    print(f"installing the MLServer peer into {venv} ({', '.join(PACKAGES)}); once, ~1-2 min")
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
    ]
    subprocess.run([*pip, *PACKAGES], check=True)
    marker.write_text(json.dumps(PACKAGES))
    return exe


def start(
    model: Path,
    name: str,
    workdir: Path,
    threads: int,
    max_batch_size: int = 32,
    max_batch_time_s: float = 0.005,
    log: Path | None = None,
) -> Server:
    """Start MLServer serving `model` as `name` on 127.0.0.1 with adaptive batching."""
    exe = ensure_venv()
    folder = workdir / f"mlserver-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "mlserver_runtime.py", folder / "mlserver_runtime.py")
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    settings = {
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "debug": False,
    }
    model_settings = {
        "name": name,
        "implementation": "mlserver_runtime.OnnxRuntimeModel",
        "parameters": {"uri": str(model.resolve())},
        "max_batch_size": max_batch_size,
        "max_batch_time": max_batch_time_s,
    }
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    (folder / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    env = {**os.environ, "ORT_INTRA_OP_THREADS": str(threads)}
    server = start_polling(
        "mlserver",
        [str(exe), "start", str(folder)],
        f"http://127.0.0.1:{http_port}",
        f"/v2/models/{name}/ready",
        log or folder / "server.log",
        timeout_s=240,
        env=env,
        cwd=folder,
    )
    server.grpc = f"127.0.0.1:{grpc_port}"
    server.metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    return server
