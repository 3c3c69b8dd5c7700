"""`make demo`: the data plane end to end on the embedded defaults.

1. the example model (all-MiniLM-L6-v2 exported to ONNX by scripts/build_models.py, or the
   generated BERT-like stand-in when torch is not installed: it says which);
2. blade.optimize on the CPU with real tokenized sentences, and its report;
3. two eas-server processes, plain (processor onnx) and blade, registered in the embedded store
   (sqlite, ~/.autoai/demo/store.db);
4. traffic to each instance found in the store, at concurrency 1 and 8, with the client-side and
   server-side QPS and RT side by side, as in the original Blade write-up's tables;
5. SIGTERM to both: they deregister, drain and exit.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blade import optimize, render_report  # noqa: E402
from config_store import open_store  # noqa: E402
from eas_client import encode_request  # noqa: E402

CACHE = Path(os.environ.get("AUTOAI_CACHE", Path.home() / ".cache" / "autoai")) / "models"
HOME = Path.home() / ".autoai" / "demo"


def example_model() -> tuple[Path, dict[str, np.ndarray], str]:
    candidates = (
        ("minilm-l6", "all-MiniLM-L6-v2"),
        ("tiny-bert", "generated BERT-like stand-in (no torch)"),
    )
    for stem, label in candidates:
        model, npz = CACHE / f"{stem}.onnx", CACHE / f"{stem}.inputs.npz"
        if model.exists() and npz.exists():
            with np.load(npz) as data:
                return model, {k: data[k][:32] for k in ("input_ids", "attention_mask")}, label
    raise SystemExit(f"no example model in {CACHE}: run `python scripts/build_models.py` first")


def start_server(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "eas_server", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"eas-server did not start: {' '.join(args)}")
    return proc, line.removeprefix("listening on ")


def scrape(url: str) -> dict[str, float]:
    """Counters of one instance's /metrics: successes, and the sums and counts of the histograms."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {"requests": 0.0, "rt": 0.0, "queue": 0.0, "compute": 0.0, "rows": 0.0, "batches": 0.0}
    names = {
        "eas_request_duration_seconds_sum": "rt",
        "eas_queue_duration_seconds_sum": "queue",
        "eas_compute_duration_seconds_sum": "compute",
        "eas_batch_size_sum": "rows",
        "eas_batch_size_count": "batches",
    }
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == "eas_requests_total" and sample.labels.get("outcome") == "success":
                out["requests"] += sample.value
            elif sample.name in names:
                out[names[sample.name]] += sample.value
    return out


async def load(
    url: str, bodies: list[tuple[bytes, int]], concurrency: int, seconds: float
) -> list[float]:
    latencies: list[float] = []
    stop = time.monotonic() + seconds
    async with httpx.AsyncClient(
        base_url=url, limits=httpx.Limits(max_connections=concurrency)
    ) as client:

        async def worker(k: int) -> None:
            i = k
            while time.monotonic() < stop:
                body, length = bodies[i % len(bodies)]
                i += concurrency
                t0 = time.perf_counter()
                headers = {"Inference-Header-Content-Length": str(length)}
                r = await client.post("/v2/models/minilm/infer", content=body, headers=headers)
                r.raise_for_status()
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return latencies


def main() -> int:
    model, data, label = example_model()
    print(f"example model: {label} ({model})\n")
    out = HOME / "minilm.blade"
    result = optimize(model, device="cpu", test_data=data, output_dir=out, batch_sizes=(1, 8))
    print(render_report(result.report) + "\n")
    store_url = f"sqlite://{HOME / 'store.db'}"
    blade_args = ["--model", str(result.artifact_dir), "--processor", "blade", "--name", "minilm"]
    blade_args += ["--service", "minilm-1-blade", "--store", store_url]
    servers = {
        "onnx": start_server(["--model", str(model), "--name", "minilm", "--store", store_url]),
        "blade": start_server(blade_args),
    }
    bodies = []
    for i in range(len(data["input_ids"])):
        row = {k: v[i : i + 1] for k, v in data.items()}
        body, length = encode_request(row, outputs=["sentence_embedding"])
        bodies.append((body, length or 0))
    with open_store(store_url, snapshot_dir=HOME / "snapshot", failover_dir=False) as store:
        time.sleep(0.5)
        found = {s: store.instances(s) for s in ("minilm-1", "minilm-1-blade")}
        print(
            "instances in the store:", {s: [i.address for i in v] for s, v in found.items()}, "\n"
        )
        header = (
            f"{'processor':9} {'c':>3} | {'client QPS':>10} {'RT p50 ms':>9} {'RT p99 ms':>9} | "
        )
        header += f"{'server QPS':>10} {'RT ms':>6} {'queue ms':>8} {'compute ms':>10} {'batch':>5}"
        print(header)
        print("-" * len(header))
        for name, (_, url) in servers.items():
            for concurrency in (1, 8):
                before = scrape(url)
                start = time.monotonic()
                lat = asyncio.run(load(url, bodies, concurrency, 5.0))
                elapsed = time.monotonic() - start
                d = {k: v - before[k] for k, v in scrape(url).items()}
                n = max(d["requests"], 1.0)
                p50 = statistics.median(lat) * 1e3
                p99 = sorted(lat)[int(0.99 * (len(lat) - 1))] * 1e3
                client = f"{len(lat) / elapsed:10.1f} {p50:9.2f} {p99:9.2f}"
                rt, queue, compute = (d[k] / n * 1e3 for k in ("rt", "queue", "compute"))
                mean_batch = d["rows"] / max(d["batches"], 1)
                server = f"{d['requests'] / elapsed:10.1f} {rt:6.2f} {queue:8.2f} {compute:10.2f}"
                server += f" {mean_batch:5.1f}"
                print(f"{name:9} {concurrency:>3} | {client} | {server}")
        for proc, _ in servers.values():
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(60) for proc, _ in servers.values()]
        left = {s: store.instances(s) for s in ("minilm-1", "minilm-1-blade")}
        remaining = sum(len(v) for v in left.values())
        print(f"\nSIGTERM: exit codes {codes}; instances left in the store: {remaining}")
    print(f"blade artifact: {result.artifact_dir}  (speedup {result.speedup:.2f}x at batch 8)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
