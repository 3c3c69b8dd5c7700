"""How far one control plane, one ZooKeeper ensemble and the SDK watch scale: measure, then compute.

Run: ``.venv/bin/python -m benchmarks.scaling.capacity [--watchers 20] [--churn 100] [--json F]``

Part 1 measures, on a real standalone ZooKeeper started here (Debian's package), what
docs/benchmarks.md does not have yet: instance churn. One store registers and deregisters
instances of one service one at a time; ``--watchers`` other stores (each its own session)
watch that service; for each change it records when every watcher has seen it, and ``wchs``
gives the server's watch count.

Part 2 computes, for a few fleet sizes, what the store must carry: server watches, notifications
per publish and per churn event, read bytes per publish, session pings, client CPU per
notification. Its inputs are the figures measured on this machine (docs/benchmarks.md, part 1);
each output row names the inputs it uses, so every number in docs/scaling.md can be recomputed.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from config_store import ConfigStore, Instance, open_store
from config_store.testing import ZooKeeperServer, four_letter_word

# Measured on this machine (AMD EPYC, 2 cores), docs/benchmarks.md "Config store propagation"
# and "SDK": a ZooKeeper publish (CAS + history in one transaction) acknowledged alone, and the
# client CPU one kazoo session spends per notification (watch event, re-read, decode, callback).
PUBLISHES_PER_S = 325.0
CLIENT_CPU_PER_NOTIFICATION_S = 0.0018
ROUTE_TABLE_BYTES = 3_000  # a 4-route table with a BERT signature, as the SDK tests publish
SESSION_TIMEOUT_S = 10.0  # kazoo pings every timeout / 3


@dataclass
class Churn:
    watchers: int
    changes: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    changes_per_s: float
    server_watches: int


def measure_churn(zk_url: str, port: int, watchers: int, changes: int) -> Churn:
    stores: list[ConfigStore] = [
        open_store(zk_url, snapshot_dir=False, failover_dir=False) for _ in range(watchers + 1)
    ]
    registrar, watching = stores[0], stores[1:]
    seen: list[set[str]] = [set() for _ in watching]
    cond = threading.Condition()

    def watcher(i: int) -> Any:
        def on_change(instances: list[Instance]) -> None:
            with cond:
                seen[i] = {inst.id for inst in instances}
                cond.notify_all()

        return on_change

    handles = [s.watch_instances("churn", watcher(i)) for i, s in enumerate(watching)]
    latencies: list[float] = []
    try:
        time.sleep(1.0)  # every watcher has read the service once and set its watch
        watches = _watch_count(port)
        start = time.perf_counter()
        for n in range(changes):
            port_n = 20_000 + n
            t0 = time.perf_counter()
            registration = registrar.register("churn", "127.0.0.1", port_n, {"n": n})
            wanted = f"127.0.0.1:{port_n}"
            _wait(cond, seen, wanted, present=True)
            latencies.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            registration.close()
            _wait(cond, seen, wanted, present=False)
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
    finally:
        for h in handles:
            h.cancel()
        for s in stores:
            s.close()
    ms = sorted(x * 1000 for x in latencies)
    return Churn(
        watchers=watchers,
        changes=len(ms),
        p50_ms=round(statistics.median(ms), 2),
        p99_ms=round(ms[min(len(ms) - 1, math.ceil(0.99 * len(ms)) - 1)], 2),
        max_ms=round(ms[-1], 2),
        changes_per_s=round(len(ms) / elapsed, 1),
        server_watches=watches,
    )


def _wait(cond: threading.Condition, seen: list[set[str]], wanted: str, *, present: bool) -> None:
    """Until every watcher's last view has (or has not) ``wanted``."""
    with cond:
        if not cond.wait_for(lambda: all((wanted in s) == present for s in seen), timeout=30):
            raise RuntimeError(f"a watcher did not see {wanted} come or go within 30 s")


def _watch_count(port: int) -> int:
    for line in four_letter_word(port, "wchs").splitlines():  # "Total watches:21"
        if line.startswith("Total watches:"):
            return int(line.split(":", 1)[1])
    raise RuntimeError("no watch count in the server's wchs answer")


@dataclass
class Fleet:
    models: int
    sdk_processes: int
    models_per_sdk: int
    instances_per_model: int
    publishes_per_s: float
    churn_per_s: float


def compute(f: Fleet, churn: Churn) -> dict[str, Any]:
    """What the store carries for one fleet (each figure with the inputs it uses)."""
    model_watches = f.sdk_processes * f.models_per_sdk  # one data watch per watched route table
    # each watched model: its routes' services, ~2 versions live: one children watch per service
    service_watches = f.sdk_processes * f.models_per_sdk * 2
    watchers_per_model = f.sdk_processes * f.models_per_sdk / f.models
    notif_per_publish = watchers_per_model
    notif_per_s = f.publishes_per_s * watchers_per_model + f.churn_per_s * watchers_per_model
    return {
        **asdict(f),
        "server watches": model_watches + service_watches,
        "watchers per model": round(watchers_per_model),
        "notifications per publish": round(notif_per_publish),
        "read MB per publish (re-read of the table)": round(
            notif_per_publish * ROUTE_TABLE_BYTES / 1e6, 2
        ),
        "notifications/s (publishes + churn)": round(notif_per_s),
        "session pings/s": round(f.sdk_processes / (SESSION_TIMEOUT_S / 3)),
        "SDK CPU per process, ms/s": round(
            (f.publishes_per_s + f.churn_per_s)
            * f.models_per_sdk
            / f.models
            * CLIENT_CPU_PER_NOTIFICATION_S
            * 1000,
            3,
        ),
        "publish capacity used": f"{f.publishes_per_s / PUBLISHES_PER_S:.1%}",
        # the current table plus history_keep (100) revisions per model, all in server memory
        "route tables + history in ZooKeeper, MB": round(f.models * ROUTE_TABLE_BYTES * 101e-6, 1),
    }


FLEETS = [
    Fleet(100, 1_000, 20, 2, 0.1, 0.2),
    Fleet(1_000, 1_000, 20, 2, 1.0, 2.0),
    Fleet(1_000, 10_000, 20, 2, 1.0, 2.0),
    Fleet(1_000, 10_000, 200, 4, 1.0, 5.0),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--watchers", type=int, default=20, help="watching sessions")
    ap.add_argument("--churn", type=int, default=100, help="registrations (each also removed)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = ZooKeeperServer.standalone(Path(tmp))
        server.start()
        try:
            url = f"zk://{server.address}/capacity?session_timeout=10"
            churn = measure_churn(url, server.port, args.watchers, args.churn)
        finally:
            server.stop()
    print("instance churn on one standalone ZooKeeper (loopback):")
    print(json.dumps(asdict(churn), indent=2))
    rows = [compute(f, churn) for f in FLEETS]
    print("\nwhat the store carries (computed from the measured inputs):")
    keys = list(rows[0])
    width = max(len(k) for k in keys)
    for key in keys:
        print(f"{key:<{width}}  " + "  ".join(f"{r[key]!s:>10}" for r in rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"churn": asdict(churn), "fleets": rows}, indent=2))


if __name__ == "__main__":
    main()
