"""Publish-to-first-call-on-new-revision with many SDK processes.

Starts N processes, each with one ``ModelClient`` (its own store session) subscribed to one
model, then publishes new revisions of the model's route table, spaced apart, and records in every
process the moment the new revision is swapped in; from that moment the next ``predict`` routes
by it (the swap is one assignment the call path reads), so publish -> swap is publish -> first
call on the new revision, without 100 processes' worth of inference traffic distorting a 2-core
machine. Prints p50/p99/max per backend.

    python -m benchmarks.sdk.propagation --processes 100 --publishes 30
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
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MODEL = "bench-model"


def _table(i: int) -> bytes:
    doc = {
        "schema_version": 1,
        "model": MODEL,
        "revision": 0,
        "routes": [
            {"version": str(1 + i % 2), "weight": 100, "service": f"s{i % 2}", "processor": "onnx"}
        ],
        "sticky_key": None,
        "shadow": None,
        "signature": {"inputs": [], "outputs": []},
        "note": f"publish {i}",
    }
    return json.dumps(doc).encode()


def worker(url: str, snapshot: str) -> None:
    """One SDK process: report (revision, wall time) each time a revision is swapped in."""
    from prometheus_client import CollectorRegistry

    from autoai.sdk import ModelClient
    from autoai.sdk._base import _Subscription
    from config_store import ConfigItem

    lock = threading.Lock()

    def emit(msg: dict[str, Any]) -> None:
        line = json.dumps(msg) + "\n"
        with lock:  # one write per line: the listener thread and this one both report
            sys.stdout.write(line)
            sys.stdout.flush()

    class Timed(ModelClient):
        def _on_table(self, sub: _Subscription, item: ConfigItem | None) -> None:
            super()._on_table(sub, item)
            if item is not None:
                emit({"rev": item.revision, "t": time.time()})

    with Timed(url, registry=CollectorRegistry(), snapshot_dir=snapshot) as client:
        client.routes(MODEL)
        emit({"ready": True})
        sys.stdin.read()  # until the parent closes our stdin


def _spawn(url: str, snapshot: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--worker", url, "--snapshot", snapshot],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def run(url: str, processes: int, publishes: int, spacing: float) -> dict[str, Any]:
    from config_store import open_store

    tmp = tempfile.mkdtemp(prefix="sdkprop-")
    store = open_store(url, snapshot_dir=False)
    store.publish(MODEL, _table(0))
    procs = [_spawn(url, f"{tmp}/s{i}") for i in range(processes)]
    seen: dict[int, list[float]] = {}
    lock = threading.Lock()
    ready = threading.Semaphore(0)

    def read(proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if not line.startswith("{"):
                continue
            msg = json.loads(line)
            if msg.get("ready"):
                ready.release()
            elif "rev" in msg:
                with lock:
                    seen.setdefault(msg["rev"], []).append(msg["t"])

    readers = [threading.Thread(target=read, args=(p,), daemon=True) for p in procs]
    for t in readers:
        t.start()
    for _ in procs:
        if not ready.acquire(timeout=180):
            raise RuntimeError("an SDK process did not start")
    time.sleep(1.0)
    sent: dict[int, float] = {}
    for i in range(1, publishes + 1):
        t0 = time.time()
        rev = store.publish(MODEL, _table(i))
        sent[rev] = t0
        time.sleep(spacing)
    time.sleep(2.0)
    for p in procs:
        assert p.stdin is not None
        p.stdin.close()
    for p in procs:
        p.wait(30)
    store.close()
    lat: list[float] = []
    missing = 0
    for rev, t0 in sent.items():
        times = seen.get(rev, [])
        missing += processes - len(times)
        lat.extend((t - t0) * 1e3 for t in times)
    lat.sort()
    return {
        "url": url.split("://")[0],
        "processes": processes,
        "publishes": publishes,
        "samples": len(lat),
        "missing": missing,
        "p50_ms": statistics.median(lat),
        "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
        "max_ms": lat[-1],
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--processes", type=int, default=100)
    ap.add_argument("--publishes", type=int, default=30)
    ap.add_argument("--spacing", type=float, default=0.5, help="seconds between publishes")
    ap.add_argument("--backends", default="zk,sqlite")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--snapshot", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.snapshot)
        return 0
    rows = []
    for backend in args.backends.split(","):
        if backend == "zk":
            from config_store.testing import ZooKeeperServer

            with ZooKeeperServer.standalone(Path(tempfile.mkdtemp(prefix="zk-"))) as zk:
                url = f"zk://{zk.address}/b{uuid.uuid4().hex[:8]}"
                rows.append(run(url, args.processes, args.publishes, args.spacing))
        else:
            db = Path(tempfile.mkdtemp(prefix="sq-")) / "store.db"
            rows.append(run(f"sqlite:///{db}", args.processes, args.publishes, args.spacing))
    target = {"zk": 100.0, "sqlite": 150.0}
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"{'backend':8} {'SDK procs':>9} {'samples':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8} {'target p99':>10}  missing")  # fmt: skip
    for r in rows:
        print(
            f"{r['url']:8} {r['processes']:9d} {r['samples']:8d} {r['p50_ms']:8.1f} "
            f"{r['p99_ms']:8.1f} {r['max_ms']:8.1f} {target[r['url']]:10.0f}  {r['missing']}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
