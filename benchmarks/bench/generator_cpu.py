"""Does ``autoai bench`` drive the model server or hold it back? Its CPU per call at concurrency 32.

One ``eas-server`` (onnx processor, defaults: batching up to 32 rows, 5 ms) serves the small
``classifier`` fixture (x FP32 [1, 8] -> logits, probs), registered in an embedded store with a
published route table. Closed loop at ``--concurrency`` (32), one row per sender, rows
interleaved over ``--rounds`` (this 2-core machine is shared and drifts):

- ``wrk`` (compiled C, Debian's package; skipped when absent): the server's throughput when the
  generator costs next to nothing, the reference for "full throughput";
- ``autoai bench --url``: the lean pre-encoded HTTP/1.1 sender of ``autoai.bench``;
- ``AsyncEasClient(urls=[...])``: the SDK's transport, called directly;
- ``autoai bench --store``: through ``AsyncModelClient`` (routing, input check, client metrics).

The three Python rows run ``autoai.bench``'s own loop on uvloop, as the CLI does. Per row: client
and server QPS (``/metrics`` deltas), client p50/p99, the generator's CPU (its process, percent
of one core, and per call), the server's CPU (its process tree), and the CPU everything else on
the machine used over the same window (other engineers' work spoils a row when it is high).
The target: less than 25 % of one core for ``--url`` at concurrency 32 while the server's QPS is
within 10 % of wrk's.

    python -m benchmarks.bench.generator_cpu [--seconds 8] [--warmup 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import uvloop

from autoai.bench import BenchReport, ServerSnapshot, Step, StepResult
from autoai.bench._direct import DirectTarget
from autoai.bench._runner import Target, run_steps
from autoai.bench._scrape import Scraper
from autoai.bench._sdk import SdkTarget
from autoai.testing import machine_busy_seconds, models as onnx_models, tree_cpu_seconds
from config_store import open_store
from eas_client import AsyncEasClient, encode_request

from ..serving.bodies import Body
from ..serving.loadgen import run as wrk_run, write_lua

MODEL = "cls"


class Server:
    """An eas-server subprocess registered in ``store``, stopped by PID."""

    def __init__(self, model: Path, store: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "eas_server", "--model", str(model), "--name", MODEL,
                "--version", "1", "--port", "0", "--store", store,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"eas-server did not start: {line!r}")
        self.url = line.removeprefix("listening on ")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


class CpuScraper(Scraper):
    """Also reads the server's and the machine's CPU at each scrape (the window's two ends)."""

    def __init__(self, pid: int) -> None:
        super().__init__()
        self.pid = pid
        self.marks: list[tuple[float, float]] = []

    async def scrape(self, urls: Sequence[str]) -> tuple[dict[str, ServerSnapshot], list[str]]:
        self.marks.append((tree_cpu_seconds(self.pid), machine_busy_seconds()))
        return await super().scrape(urls)


class EasClientTarget:
    """``AsyncEasClient(urls=[url])`` as the sender."""

    def __init__(self, url: str, inputs: dict[str, np.ndarray[Any, Any]]) -> None:
        self.url = url
        self.inputs = inputs
        self.client = AsyncEasClient(urls=[url], model=MODEL, version="1")

    async def send(self) -> None:
        await self.client.infer(self.inputs)

    async def instances(self) -> list[str]:
        return [self.url]

    async def aclose(self) -> None:
        await self.client.aclose()


def _row(result: StepResult, marks: list[tuple[float, float]]) -> dict[str, float]:
    (server0, machine0), (server1, machine1) = marks[-2:]
    window = result.window_s
    gen = result.generator
    server_cpu = server1 - server0
    lat = result.client.latency
    return {
        "client_qps": result.client.qps,
        "server_qps": result.server.qps if result.server else float("nan"),
        "p50_ms": lat.p50 * 1e3 if lat else float("nan"),
        "p99_ms": lat.p99 * 1e3 if lat else float("nan"),
        "errors": float(result.client.error_count),
        "gen_cpu_pct": gen.cpu_percent,
        "gen_us_per_call": gen.cpu_per_call_us or float("nan"),
        "server_cpu_pct": 100 * server_cpu / window,
        "other_cpu_pct": 100 * max(0.0, machine1 - machine0 - server_cpu - gen.cpu_s) / window,
    }


def python_row(
    kind: str, server: Server, store: str, concurrency: int, warmup: float, seconds: float
) -> dict[str, float]:
    inputs = {"x": np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)}

    async def main() -> dict[str, float]:
        target: Any
        if kind == "url":
            target = DirectTarget(server.url, MODEL, "1", inputs)
        elif kind == "easclient":
            target = EasClientTarget(server.url, inputs)
        else:
            target = await SdkTarget.open(store, MODEL, None, max_in_flight=concurrency)
            await target.probe(inputs)
        scraper = CpuScraper(server.proc.pid)
        report = BenchReport(MODEL, None, "url", server.url, "binary", 1, [], warmup, seconds)
        try:
            bound: Target = target
            await run_steps(bound, [Step(concurrency=concurrency)], report, scraper=scraper)
        finally:
            await target.aclose()
            await scraper.aclose()
        return _row(report.steps[0], scraper.marks)

    return uvloop.run(main())


def wrk_row(
    wrk: str, server: Server, tmp: Path, concurrency: int, warmup: float, seconds: float
) -> dict[str, float]:
    inputs = {"x": np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)}
    data, length = encode_request(inputs, binary_inputs=True, binary_outputs=True)
    headers = {"Content-Type": "application/octet-stream"}
    if length is not None:
        headers["Inference-Header-Content-Length"] = str(length)
    path = tmp / "body.bin"
    path.write_bytes(data)
    script = write_lua([path], [Body(data, headers)], tmp / "body.lua")
    url = f"{server.url}/v2/models/{MODEL}/versions/1/infer"
    wrk_run(wrk, url, script, concurrency, warmup, server.proc.pid)  # warmup
    r = wrk_run(wrk, url, script, concurrency, seconds, server.proc.pid)
    return {
        "client_qps": r.rps,
        "server_qps": float("nan"),
        "p50_ms": r.p50 * 1e3,
        "p99_ms": r.p99 * 1e3,
        "errors": float(r.non_2xx + r.socket_errors),
        "gen_cpu_pct": 100 * r.wrk_cpu,
        "gen_us_per_call": 1e6 * r.wrk_cpu * r.duration_s / max(r.requests, 1),
        "server_cpu_pct": 100 * r.server_cpu,
        "other_cpu_pct": 100 * r.other_cpu,
    }


LABELS = {
    "wrk": "wrk -t1 (C, reference)",
    "url": "autoai bench --url (lean)",
    "easclient": "AsyncEasClient(urls=[...])",
    "sdk": "autoai bench --store (SDK)",
}
COLUMNS = (
    ("client_qps", "client QPS", "{:.0f}"),
    ("server_qps", "server QPS", "{:.0f}"),
    ("p50_ms", "p50 ms", "{:.2f}"),
    ("p99_ms", "p99 ms", "{:.2f}"),
    ("gen_cpu_pct", "gen CPU %", "{:.1f}"),
    ("gen_us_per_call", "gen us/call", "{:.0f}"),
    ("server_cpu_pct", "server CPU %", "{:.0f}"),
    ("other_cpu_pct", "other CPU %", "{:.0f}"),
    ("errors", "errors", "{:.0f}"),
)


def _median(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=8.0, help="measured window per row")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-cpu-"))
    os.environ["HOME"] = str(tmp)  # the store's snapshots of this run only
    store_url = f"sqlite:///{tmp / 'store.db'}"
    store = open_store(store_url, snapshot_dir=tmp / "snap")
    server = Server(onnx_models.classifier(tmp / "models"), store_url)
    wrk = shutil.which("wrk")
    kinds = (["wrk"] if wrk else []) + ["url", "easclient", "sdk"]
    rows: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    try:
        deadline = time.monotonic() + 30
        while not store.instances(f"{MODEL}-1"):
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not register")
            time.sleep(0.05)
        table = {
            "schema_version": 1,
            "model": MODEL,
            "revision": 0,
            "routes": [
                {"version": "1", "weight": 100, "service": f"{MODEL}-1", "processor": "onnx"}
            ],
            "signature": {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}]},
        }
        store.publish(MODEL, json.dumps(table).encode(), group="models")
        load = os.getloadavg()
        loads = " ".join(f"{v:.2f}" for v in load)
        print(f"machine: {os.cpu_count()} cores, load average {loads}")
        for r in range(args.rounds):
            for kind in kinds:
                if kind == "wrk":
                    assert wrk is not None
                    row = wrk_row(wrk, server, tmp, args.concurrency, args.warmup, args.seconds)
                else:
                    row = python_row(
                        kind, server, store_url, args.concurrency, args.warmup, args.seconds
                    )
                rows[kind].append(row)
                print(
                    f"  round {r + 1} {LABELS[kind]}: {row['client_qps']:.0f} QPS, generator "
                    f"{row['gen_cpu_pct']:.1f}% of a core, other {row['other_cpu_pct']:.0f}%",
                    flush=True,
                )
    finally:
        server.stop()
        store.close()
    medians = {k: _median(v) for k, v in rows.items()}
    print(
        f"\nclassifier x FP32 [1, 8] on eas-server (onnx), closed loop at concurrency "
        f"{args.concurrency}, {args.seconds:g} s windows, median of {args.rounds} round(s)"
    )
    print(f"{'sender':30}" + "".join(f"{title:>14}" for _, title, _ in COLUMNS))
    for kind, m in medians.items():
        cells = "".join(f"{fmt.format(m[key]):>14}" for key, _, fmt in COLUMNS)
        print(f"{LABELS[kind]:30}{cells}")
    lean = medians["url"]
    verdict = lean["gen_cpu_pct"] < 25.0
    line = (
        f"\nautoai bench --url at concurrency {args.concurrency}: generator "
        f"{lean['gen_cpu_pct']:.1f}% of one core (target < 25%)"
    )
    if "wrk" in medians:
        share = lean["server_qps"] / medians["wrk"]["client_qps"]
        line += f", server QPS {100 * share:.0f}% of wrk's (target >= 90%)"
        verdict = verdict and share >= 0.90
    print(line + (": meets the target" if verdict else ": MISSES the target"))
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, "medians": medians}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
