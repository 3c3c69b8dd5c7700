"""What the SDK adds to a call, and what one SDK process pushes through two instances.

Overhead: one ``eas-server`` serving an identity model registered in an embedded store; calls
alternate, in rounds, between a direct ``EasClient(urls=[...])`` and ``ModelClient.predict``
routed by a published route table to the same instance (same transport underneath), so both see
the same server and machine drift. Prints p50/p99 per side and the difference, plus the SDK's
routing path alone (no I/O: table lookup, route pick, input check, client lookup).

Throughput: 32 threads for ``--seconds`` each: ``ModelClient`` against two instances of a small
classifier, and ``tritonclient.http`` against one URL of the same model (the single-URL client
anchors the comparison), and ``EasClient`` against that one URL.

    python -m benchmarks.sdk.overhead [--calls 2000] [--rounds 5] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from autoai.sdk import ModelClient
from autoai.testing import models as onnx_models
from config_store import open_store
from eas_client import EasClient


class Server:
    """An eas-server subprocess, stopped by PID."""

    def __init__(self, model: Path, name: str, store: str, threads: int = 1) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "eas_server",
                "--model",
                str(model),
                "--name",
                name,
                "--version",
                "1",
                "--port",
                "0",
                "--store",
                store,
                "--intra-op-threads",
                str(threads),
                "--max-batch-timeout-ms",
                "1",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"eas-server did not start: {line!r}")
        self.url = line.removeprefix("listening on ")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def _table(model: str, service: str) -> bytes:
    doc = {
        "schema_version": 1,
        "model": model,
        "revision": 0,
        "routes": [{"version": "1", "weight": 100, "service": service, "processor": "onnx"}],
        "signature": {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, -1]}]},
    }
    return json.dumps(doc).encode()


def _times(call: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        call()
        out.append((time.perf_counter_ns() - t0) / 1e3)
    return out


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _wait(store: Any, service: str, count: int) -> None:
    deadline = time.monotonic() + 30
    while len(store.instances(service)) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{service}: {count} instance(s) did not register")
        time.sleep(0.05)


def overhead(tmp: Path, calls: int, rounds: int) -> dict[str, Any]:
    url = f"sqlite:///{tmp / 'store.db'}"
    store = open_store(url, snapshot_dir=tmp / "snap")
    model = onnx_models.identity(tmp / "models", n=4)
    server = Server(model, "ident", url)
    try:
        _wait(store, "ident-1", 1)
        store.publish("ident", _table("ident", "ident-1"))
        inputs = {"x": np.ones((1, 4), np.float32)}
        direct = EasClient(urls=[server.url], model="ident", version="1")
        sdk = ModelClient(store, registry=CollectorRegistry())
        d: list[float] = []
        s: list[float] = []
        try:
            for _ in range(200):  # warm both paths and the server
                direct.infer(inputs)
                sdk.predict("ident", inputs)
            for _ in range(rounds):
                d += _times(lambda: direct.infer(inputs), calls)
                s += _times(lambda: sdk.predict("ident", inputs), calls)
            # The SDK's own path, without I/O.
            table = sdk.routes("ident")

            def route_only() -> None:
                _, route, _ = sdk._route("ident", inputs, None, None)
                sdk._client(table, route)

            path = _times(route_only, 20000)
        finally:
            direct.close()
            sdk.close()
    finally:
        server.stop()
        store.close()
    return {
        "direct_p50_us": _pct(d, 0.5),
        "direct_p99_us": _pct(d, 0.99),
        "sdk_p50_us": _pct(s, 0.5),
        "sdk_p99_us": _pct(s, 0.99),
        "added_p50_us": _pct(s, 0.5) - _pct(d, 0.5),
        "path_p50_us": statistics.median(path),
        "calls": calls * rounds,
    }


def _drive(call: Callable[[], Any], threads: int, seconds: float) -> tuple[float, int]:
    counts = [0] * threads
    errors = [0]
    stop = threading.Event()

    def run(i: int) -> None:
        while not stop.is_set():
            try:
                call()
                counts[i] += 1
            except Exception:
                errors[0] += 1

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join(30)
    return sum(counts) / (time.perf_counter() - t0), errors[0]


def throughput(tmp: Path, seconds: float, threads: int) -> list[tuple[str, float, int]]:
    import tritonclient.http as triton

    url = f"sqlite:///{tmp / 'store2.db'}"
    store = open_store(url, snapshot_dir=tmp / "snap2")
    model = onnx_models.classifier(tmp / "models")
    servers = [Server(model, "cls", url), Server(model, "cls", url)]
    rows: list[tuple[str, float, int]] = []
    try:
        _wait(store, "cls-1", 2)
        store.publish("cls", _table("cls", "cls-1"))
        inputs = {"x": np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)}
        with ModelClient(store, registry=CollectorRegistry()) as sdk:
            rows.append(
                (
                    "ModelClient, 2 instances",
                    *_drive(lambda: sdk.predict("cls", inputs), threads, seconds),
                )
            )
        with EasClient(urls=[servers[0].url], model="cls", version="1") as one:
            rows.append(("EasClient, 1 URL", *_drive(lambda: one.infer(inputs), threads, seconds)))
        local = threading.local()
        address = servers[0].url.removeprefix("http://")

        def triton_call() -> None:
            client = getattr(local, "client", None)
            if client is None:
                client = local.client = triton.InferenceServerClient(address)
            tensor = triton.InferInput("x", [1, 8], "FP32")
            tensor.set_data_from_numpy(inputs["x"], binary_data=True)
            client.infer("cls", [tensor], model_version="1").as_numpy("logits")

        rows.append(("tritonclient.http, 1 URL", *_drive(triton_call, threads, seconds)))
    finally:
        for server in servers:
            server.stop()
        store.close()
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--calls", type=int, default=2000, help="calls per side per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=10.0, help="per throughput row")
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="sdkbench-"))
    os.environ["HOME"] = str(tmp)  # snapshots and caches of this run only
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    o = overhead(tmp, args.calls, args.rounds)
    print(f"\nper-call latency, identity model, {o['calls']} calls per side, interleaved rounds")
    print(f"{'path':34} {'p50 us':>8} {'p99 us':>8}")
    print(
        f"{'EasClient(urls=[...]) direct':34} {o['direct_p50_us']:8.0f} {o['direct_p99_us']:8.0f}"
    )
    print(f"{'ModelClient.predict (routed)':34} {o['sdk_p50_us']:8.0f} {o['sdk_p99_us']:8.0f}")
    print(f"{'added by the SDK (p50)':34} {o['added_p50_us']:8.1f}   target <= 50")
    print(f"{'SDK routing path alone, no I/O':34} {o['path_p50_us']:8.1f}")
    if not args.skip_throughput:
        rows = throughput(tmp, args.seconds, args.threads)
        print(f"\nthroughput, classifier model, {args.threads} threads, {args.seconds:g} s each")
        print(f"{'client':28} {'QPS':>8} {'errors':>7}")
        for name, qps, errors in rows:
            print(f"{name:28} {qps:8.0f} {errors:7d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
