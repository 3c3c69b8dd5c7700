"""`make demo`: the data plane end to end on the embedded defaults.

1. the example model (all-MiniLM-L6-v2 exported to ONNX by scripts/build_models.py, or the
   generated BERT-like stand-in when torch is not installed: it says which);
2. blade.optimize on the CPU with real tokenized sentences, and its report;
3. two eas-server processes, plain (processor onnx) and blade, registered in the embedded store
   (sqlite, ~/.autoai/demo/store.db);
4. traffic to each instance found in the store, at concurrency 1 and 8, with the client-side and
   server-side QPS and RT side by side, as in the original Blade write-up's tables;
5. a route table published by hand (plain 90 / blade 10, built by blade_aspect.on_publish) and
   traffic through the SDK (`autoai.sdk.ModelClient`): the split as published, per-version RT from
   the client-side metrics, then blade promoted to 100% and a rollback to the first revision;
6. SIGTERM to both: they deregister, drain and exit.
"""

from __future__ import annotations

import asyncio
import json
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

import blade_aspect  # noqa: E402
from autoai.sdk import ModelClient  # noqa: E402
from blade import render_report  # noqa: E402
from config_store import ConfigStore, open_store  # noqa: E402
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


def route_table(entries: list[dict[str, object]]) -> bytes:
    doc = {"schema_version": 1, "model": "minilm", "revision": 0, "routes": entries}
    return json.dumps(doc).encode()


def sdk_demo(
    store: ConfigStore, plan: blade_aspect.DeployPlan, data: dict[str, np.ndarray]
) -> None:
    """Publish 90/10, route 400 calls through the SDK, promote, roll back."""
    from prometheus_client import CollectorRegistry

    plain = {"service": "minilm-1", "processor": "onnx"}
    tuned = {"service": "minilm-2", "processor": plan.processor, "blade": plan.blade}

    def entries(w1: int, w2: int) -> list[dict[str, object]]:
        return [
            blade_aspect.on_publish({"version": "1", "weight": w1}, plain),
            blade_aspect.on_publish({"version": "2", "weight": w2}, tuned, fallback_version="1"),
        ]

    first = store.publish("minilm", route_table(entries(90, 10)))
    registry = CollectorRegistry()
    rows = [{k: v[i : i + 1] for k, v in data.items()} for i in range(len(data["input_ids"]))]
    with ModelClient(store, registry=registry) as client:

        def traffic(n: int) -> dict[str, int]:
            seen = {"1": 0, "2": 0}
            for i in range(n):
                client.predict("minilm", rows[i % len(rows)], outputs=["sentence_embedding"])
            for version in seen:
                labels = {"model": "minilm", "version": version}
                for processor in ("onnx", "blade"):
                    value = registry.get_sample_value(
                        "autoai_client_requests_total",
                        {**labels, "processor": processor, "outcome": "ok"},
                    )
                    seen[version] += int(value or 0)
            return seen

        def rt(version: str, processor: str) -> str:
            labels = {"model": "minilm", "version": version, "processor": processor}
            total = registry.get_sample_value("autoai_client_request_duration_seconds_sum", labels)
            count = registry.get_sample_value(
                "autoai_client_request_duration_seconds_count", labels
            )
            return f"{total / count * 1e3:.2f} ms" if total and count else "-"

        counts = traffic(400)
        print(f"\nSDK, route table revision {first} (v1 plain 90 / v2 {plan.processor} 10):")
        print(f"  calls per version {counts}; mean client RT v1 {rt('1', 'onnx')}, "
              f"v2 {rt('2', plan.processor)}")  # fmt: skip
        promoted = store.publish("minilm", route_table(entries(0, 100)))
        while client.routes("minilm").revision != promoted:
            time.sleep(0.01)
        before = counts["2"]
        counts = traffic(100)
        print(
            f"  revision {promoted}: v2 promoted to 100%: {counts['2'] - before} of 100 calls on v2"
        )
        old = next(h for h in store.history("minilm", limit=100) if h.revision == first)
        rolled = store.publish("minilm", old.content)
        while client.routes("minilm").revision != rolled:
            time.sleep(0.01)
        print(
            f"  revision {rolled}: rolled back to revision {old.revision} (90/10) "
            f"{client.routes('minilm').routes[0].weight}/{client.routes('minilm').routes[1].weight}"
        )


def main() -> int:
    model, data, label = example_model()
    print(f"example model: {label} ({model})\n")
    out = HOME / "minilm.blade"
    spec = {"blade": {"test_data": data, "batch_sizes": [1, 8]}}
    plan = blade_aspect.on_deploy(model, spec, output_dir=out, progress=True)
    assert plan.report is not None
    print(render_report(plan.report) + "\n" + f"deploy plan: {plan.reason}\n")
    store_url = f"sqlite://{HOME / 'store.db'}"
    blade_args = ["--model", str(plan.model_path), "--processor", plan.processor]
    blade_args += ["--name", "minilm", "--version", "2", "--store", store_url]
    servers = {
        "onnx": start_server(["--model", str(model), "--name", "minilm", "--store", store_url]),
        plan.processor if plan.processor != "onnx" else "onnx (v2)": start_server(blade_args),
    }
    bodies = []
    for i in range(len(data["input_ids"])):
        row = {k: v[i : i + 1] for k, v in data.items()}
        body, length = encode_request(row, outputs=["sentence_embedding"])
        bodies.append((body, length or 0))
    with open_store(store_url, snapshot_dir=HOME / "snapshot", failover_dir=False) as store:
        time.sleep(0.5)
        found = {s: store.instances(s) for s in ("minilm-1", "minilm-2")}
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
        sdk_demo(store, plan, data)
        for proc, _ in servers.values():
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(60) for proc, _ in servers.values()]
        left = {s: store.instances(s) for s in ("minilm-1", "minilm-2")}
        remaining = sum(len(v) for v in left.values())
        print(f"\nSIGTERM: exit codes {codes}; instances left in the store: {remaining}")
    print(f"blade artifact: {plan.model_path}  ({plan.reason})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
