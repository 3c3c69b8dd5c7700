"""The soak's measurements and report: process usage (``autoai.testing.usage``: RSS and open
descriptors), rows per window and per process, and the printed tables (``benchmarks.soak`` runs
the system and calls these)."""

from __future__ import annotations

import os
import sys
from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.table import Table

from autoai.bench import BenchReport
from autoai.testing import Usage, usage

GROWTH_FLAG_PERCENT = 10.0
console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)


def snapshot(roles: dict[str, int]) -> dict[str, Usage | None]:
    return {role: usage(pid) for role, pid in roles.items()}


def growth(start: int, end: int) -> float:
    return 100.0 * (end - start) / start if start else 0.0


def process_rows(
    start: dict[str, Usage | None], end: dict[str, Usage | None]
) -> list[dict[str, Any]]:
    rows = []
    for role in sorted(set(start) | set(end)):
        a, b = start.get(role), end.get(role)
        row: dict[str, Any] = {"process": role, "start": asdict(a) if a else None}
        row["end"] = asdict(b) if b else None
        row["restarted"] = bool(a and b and a.pid != b.pid)
        if a and b:
            row["rss_growth_percent"] = round(growth(a.rss_kib, b.rss_kib), 1)
            row["fd_growth"] = b.fds - a.fds
            row["flagged"] = (
                not row["restarted"] and row["rss_growth_percent"] > GROWTH_FLAG_PERCENT
            )
        rows.append(row)
    return rows


def window_rows(
    report: BenchReport, publishes: list[float], restarts: list[float], window_s: float
) -> list[dict[str, Any]]:
    """One row per load window; ``publishes`` and ``restarts`` are seconds since the load began."""
    rows = []
    for n, step in enumerate(report.steps):
        lo, hi = n * window_s, (n + 1) * window_s
        lat = step.client.latency
        rows.append(
            {
                "window": n + 1,
                "from_s": round(lo),
                "to_s": round(lo + step.window_s),
                "calls": step.client.requests + step.client.error_count,
                "errors": step.client.error_count,
                "qps": round(step.client.qps, 1),
                "p50_ms": round(lat.p50 * 1e3, 2) if lat else None,
                "p99_ms": round(lat.p99 * 1e3, 2) if lat else None,
                "max_ms": round(lat.max * 1e3, 2) if lat else None,
                "publishes": sum(lo <= t < hi for t in publishes),
                "restarts": sum(lo <= t < hi for t in restarts),
                "generator_cpu_percent": round(step.generator.cpu_percent, 1),
            }
        )
    return rows


def usage_series(
    points: list[tuple[str, dict[str, Usage | None], dict[str, int]]],
) -> dict[str, Any]:
    """RSS of every process and the store's size at each point (the start, the end of each
    window, the end), and each process's RSS growth from the end of the first window to the end:
    the figure that tells a leak from warming up (a JVM's heap, the allocator's pools)."""
    roles = sorted({role for _, usage, _ in points for role in usage})
    rss: dict[str, list[float | None]] = {}
    pids: dict[str, list[int | None]] = {}
    for role in roles:
        found = [usage.get(role) for _, usage, _ in points]
        rss[role] = [round(u.rss_kib / 1024, 1) if u else None for u in found]
        pids[role] = [u.pid if u else None for u in found]
    warm: dict[str, float | None] = {}
    for role in roles:
        a, b = rss[role][1 if len(points) > 2 else 0], rss[role][-1]
        same = pids[role][1 if len(points) > 2 else 0] == pids[role][-1]
        warm[role] = round(growth(int(a * 1024), int(b * 1024)), 1) if a and b and same else None
    figures = sorted({k for _, _, store in points for k in store})
    return {
        "at": [label for label, _, _ in points],
        "rss_mib": rss,
        "pids": pids,
        "growth_after_first_window_percent": warm,
        "store": {k: [store.get(k) for _, _, store in points] for k in figures},
    }


def print_report(doc: dict[str, Any], ramp: tuple[int, ...]) -> None:
    c = doc["config"]
    console.print(
        f"\nsoak: {c['store']} store, {c['instances']} instances x 2 versions, "
        f"max {doc['max_qps']:.0f} QPS (closed-loop ramp {list(ramp)}), load {c['rate']:.0f} QPS "
        f"({c['load'] * 100:.0f} %), {c['duration_s']:.0f} s, publish every "
        f"{c['publish_every_s']:.0f} s, SIGKILL an instance every {c['restart_every_s']:.0f} s; "
        f"load average {doc['loadavg_start']} -> {doc['loadavg_end']} on {os.cpu_count()} CPUs"
    )
    t = Table(title="Calls per window (SDK, open loop)", title_justify="left")
    cols = ("window", "from_s", "to_s", "calls", "errors", "qps", "p50_ms", "p99_ms", "max_ms")
    for col in (*cols, "publishes", "restarts"):
        t.add_column(col.replace("_", " "), justify="right")
    for w in doc["windows"]:
        t.add_row(*("-" if w[k] is None else str(w[k]) for k in (*cols, "publishes", "restarts")))
    console.print(t)
    t = Table(title="Errors by kind", title_justify="left")
    t.add_column("kind")
    t.add_column("count", justify="right")
    for kind, n in sorted(doc["errors"].items()) or [("(none)", 0)]:
        t.add_row(kind, str(n))
    console.print(t)
    t = Table(title="Instance restarts (SIGKILL, reconciler restarts)", title_justify="left")
    for col in ("at s", "version", "killed pid", "new pid", "recovered in s"):
        t.add_column(col, justify="right")
    for r in doc["restarts"]:
        rec = "-" if r["recovery_s"] is None else f"{r['recovery_s']:.1f}"
        t.add_row(f"{r['at_s']:.0f}", r["version"], str(r["pid"]), str(r["new_pid"]), rec)
    console.print(t)
    t = Table(
        title="Processes at the start and the end of the load",
        title_justify="left",
        caption=f"! : RSS grew more than {GROWTH_FLAG_PERCENT:.0f} %; restarted: a new process "
        "(SIGKILLed and restarted during the run), so its growth is not a leak figure",
    )
    for col in ("process", "pid", "RSS start MiB", "RSS end MiB", "growth", "fds start", "fds end"):
        t.add_column(col, justify="left" if col == "process" else "right")
    for p in doc["processes"]:
        a, b = p["start"], p["end"]
        pid = "-" if not a else str(a["pid"]) if not p["restarted"] else f"{a['pid']}->{b['pid']}"
        g = "-"
        if "rss_growth_percent" in p:
            g = f"{p['rss_growth_percent']:+.1f} %" + (" !" if p["flagged"] else "")
            g += " (restarted)" if p["restarted"] else ""
        t.add_row(
            p["process"], pid,
            f"{a['rss_kib'] / 1024:.1f}" if a else "-", f"{b['rss_kib'] / 1024:.1f}" if b else "-",
            g, str(a["fds"]) if a else "-", str(b["fds"]) if b else "-",
        )  # fmt: skip
    console.print(t)
    series = doc["usage_windows"]
    t = Table(
        title="RSS (MiB) and store size through the run",
        title_justify="left",
        caption="after w1: growth from the end of the first window to the end (a restarted "
        "process: -)",
    )
    t.add_column("process / figure")
    for label in (*series["at"], "after w1"):
        t.add_column(label, justify="right")
    for role, values in series["rss_mib"].items():
        warm = series["growth_after_first_window_percent"][role]
        cells = ["-" if v is None else f"{v:.1f}" for v in values]
        t.add_row(role, *cells, "-" if warm is None else f"{warm:+.1f} %")
    for key, values in series["store"].items():
        t.add_row(key, *("-" if v is None else str(v) for v in values), "")
    console.print(t)
    console.print(
        f"publishes {len(doc['publishes_s'])} ok, {sum(doc['publish_errors'].values())} failed; "
        f"calls {doc['calls']}, failed {sum(doc['errors'].values())}"
    )
