"""The demo's traffic and its tables: SDK calls from worker threads, and the instances' metrics.

Each worker thread is one application holding its own ``ModelClient`` (on one shared store) with
its own metrics registry, so that after every call the worker knows which version served it (its
registry's per-version counter moved): client-side latencies are exact per version, not read from
histogram buckets. Server-side figures are the deltas of each instance's ``/metrics``
(``eas_requests_total``, the request, queue and compute duration histograms, batch sizes) over the
same window.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import httpx
import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from rich.table import Table

from autoai.sdk import ModelClient
from config_store import ConfigStore

__all__ = ["Fleet", "Load", "ServerDelta", "add_rows", "percentile_ms", "scrape_all", "step_table"]

_SERVER_SUMS = {
    "eas_request_duration_seconds_sum": "rt",
    "eas_queue_duration_seconds_sum": "queue",
    "eas_compute_duration_seconds_sum": "compute",
    "eas_batch_size_sum": "rows",
    "eas_batch_size_count": "batches",
}


@dataclass
class Load:
    """What one traffic window saw from the client side."""

    seconds: float
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: int = 0


class Fleet:
    """``concurrency`` worker threads, each with its own ``ModelClient``, calling ``model``."""

    def __init__(
        self,
        store: ConfigStore,
        model: str,
        rows: Sequence[Mapping[str, np.ndarray]],
        concurrency: int,
    ):
        self.model = model
        self.rows = rows
        self.workers = [
            (ModelClient(store, registry=registry), registry)
            for registry in (CollectorRegistry() for _ in range(concurrency))
        ]

    def wait_revision(self, revision: int, timeout: float = 10.0) -> None:
        """Until every worker's client routes by ``revision`` (the store pushes it)."""
        deadline = time.monotonic() + timeout
        for client, _ in self.workers:
            while client.routes(self.model).revision < revision:
                if time.monotonic() > deadline:
                    raise SystemExit(f"route table revision {revision} did not reach the SDK")
                time.sleep(0.01)

    @staticmethod
    def _served(registry: CollectorRegistry) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for family in registry.collect():
            if family.name == "autoai_client_requests":
                for s in family.samples:
                    if s.name.endswith("_total") and s.labels.get("outcome") == "ok":
                        out[s.labels["version"]] += s.value
        return out

    def run(
        self, seconds: float, concurrency: int | None = None, version: str | None = None
    ) -> Load:
        """Call for ``seconds`` from ``concurrency`` workers (default all); ``version`` pins."""
        workers = self.workers[: concurrency or len(self.workers)]
        load = Load(seconds)
        lock = threading.Lock()
        start = threading.Barrier(len(workers) + 1)

        def work(k: int, client: ModelClient, registry: CollectorRegistry) -> None:
            mine: dict[str, list[float]] = defaultdict(list)
            errors = 0
            before = self._served(registry)
            start.wait()
            stop = time.monotonic() + seconds
            i = k
            while time.monotonic() < stop:
                row = self.rows[i % len(self.rows)]
                i += len(workers)
                t0 = time.perf_counter()
                try:
                    client.predict(self.model, row, version=version, outputs=["sentence_embedding"])
                except Exception:  # counted and shown; the demo goes on
                    errors += 1
                    continue
                elapsed = time.perf_counter() - t0
                after = self._served(registry)
                served = next((v for v, n in after.items() if n > before.get(v, 0.0)), "?")
                before = after
                mine[served].append(elapsed)
            with lock:
                for v, lat in mine.items():
                    load.latencies[v].extend(lat)
                load.errors += errors

        threads = [
            threading.Thread(target=work, args=(k, c, r), daemon=True)
            for k, (c, r) in enumerate(workers)
        ]
        for t in threads:
            t.start()
        start.wait()
        for t in threads:
            t.join()
        return load

    def close(self) -> None:
        for client, _ in self.workers:
            client.close()


@dataclass
class ServerDelta:
    """Sums of the instances' counters (or their change over a window)."""

    requests: float = 0.0
    rt: float = 0.0
    queue: float = 0.0
    compute: float = 0.0
    rows: float = 0.0
    batches: float = 0.0

    def __add__(self, other: ServerDelta) -> ServerDelta:
        return ServerDelta(*(a + b for a, b in zip(self._values(), other._values(), strict=True)))

    def __sub__(self, other: ServerDelta) -> ServerDelta:
        return ServerDelta(*(a - b for a, b in zip(self._values(), other._values(), strict=True)))

    def _values(self) -> tuple[float, ...]:
        return (self.requests, self.rt, self.queue, self.compute, self.rows, self.batches)


def _scrape(url: str) -> ServerDelta:
    out = ServerDelta()
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=5).text):
        for s in family.samples:
            if s.name == "eas_requests_total" and s.labels.get("outcome") == "success":
                out.requests += s.value
            elif s.name in _SERVER_SUMS:
                key = _SERVER_SUMS[s.name]
                setattr(out, key, getattr(out, key) + s.value)
    return out


def scrape_all(endpoints: Mapping[str, Iterable[str]]) -> dict[str, ServerDelta]:
    """Per version, the summed counters of its instances' ``/metrics``."""
    out = {}
    for version, urls in endpoints.items():
        total = ServerDelta()
        for url in urls:
            total += _scrape(url)
        out[version] = total
    return out


def percentile_ms(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of latencies in seconds, in milliseconds (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1e3


def step_table(title: str, caption: str = "") -> Table:
    table = Table(title=title, caption=caption, title_justify="left")
    table.add_column("version", justify="left")
    table.add_column("c", justify="right")
    for col in ("calls", "share", "QPS", "p50 ms", "p99 ms"):
        table.add_column(f"client {col}" if col in ("QPS",) else col, justify="right")
    for col in ("server QPS", "RT ms", "queue ms", "compute ms", "batch"):
        table.add_column(col, justify="right", style="cyan")
    return table


def add_rows(
    table: Table,
    load: Load,
    server: Mapping[str, ServerDelta],
    processors: Mapping[str, str],
    concurrency: int,
) -> None:
    """One row per version that served calls or was scraped, and a total row when several did."""
    total = sum(len(v) for v in load.latencies.values()) or 1
    versions = sorted(set(load.latencies) | {v for v, d in server.items() if d.requests})
    for version in versions:
        lat = load.latencies.get(version, [])
        d = server.get(version, ServerDelta())
        n = max(d.requests, 1.0)
        client = ["0", "0 %", "-", "-", "-"]
        if lat:
            client = [f"{len(lat)}", f"{100 * len(lat) / total:.0f} %"]
            client += [f"{len(lat) / load.seconds:.1f}", f"{percentile_ms(lat, 0.5):.2f}"]
            client.append(f"{percentile_ms(lat, 0.99):.2f}")
        srv = [f"{d.requests / load.seconds:.1f}", f"{d.rt / n * 1e3:.2f}"]
        srv += [f"{d.queue / n * 1e3:.2f}", f"{d.compute / n * 1e3:.2f}"]
        srv.append(f"{d.rows / max(d.batches, 1):.1f}")
        label = f"v{version} {processors.get(version, '?')}"
        table.add_row(label, str(concurrency), *client, *srv)
    if len(load.latencies) > 1 or load.errors:
        every = [x for lat in load.latencies.values() for x in lat]
        errors = f" ({load.errors} errors)" if load.errors else ""
        stats = ["-", "-", "-"]
        if every:
            stats = [f"{len(every) / load.seconds:.1f}", f"{percentile_ms(every, 0.5):.2f}"]
            stats.append(f"{percentile_ms(every, 0.99):.2f}")
        table.add_row(
            f"all{errors}", str(concurrency), str(len(every)), "100 %", *stats,
            "", "", "", "", "", style="bold",
        )  # fmt: skip
