"""Results of a run: the issue's targets, side-by-side tables (rich if installed), and JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from serving.ceiling import Ceiling
from serving.loadgen import LoadResult

# Issue 3's targets on this 2-core machine.
CEILING_TARGET = 0.9  # req/s at the highest concurrency vs the best-batch in-process ceiling
NAIVE_TARGET = 1.0  # req/s at concurrency 1 vs the naive server (same body format)
TAIL_TARGET = 2.0  # p99 <= 2 x p50 at every concurrency


@dataclass
class Row:
    """One server x body format: a wrk result per concurrency, or why there is none."""

    server: str
    fmt: str
    points: dict[int, LoadResult] = field(default_factory=dict)
    note: str = ""


@dataclass
class Targets:
    ceiling_ratio: float
    naive_ratio: float
    tail_ok: bool

    def marks(self, is_naive: bool) -> str:
        def mark(ok: bool) -> str:
            return "✓" if ok else "✗"

        parts = [f"ceil {mark(self.ceiling_ratio >= CEILING_TARGET)}"]
        if not is_naive:
            parts.append(f"naive {mark(self.naive_ratio >= NAIVE_TARGET)}")
        parts.append(f"p99 {mark(self.tail_ok)}")
        return " ".join(parts)


def targets(row: Row, ceiling: Ceiling, naive: Row | None) -> Targets | None:
    if not row.points:
        return None
    low, high = min(row.points), max(row.points)
    base = naive.points.get(low) if naive is not None else None
    naive_ratio = row.points[low].rps / base.rps if base and base.rps else math.nan
    tail_ok = all(p.p99 <= TAIL_TARGET * p.p50 for p in row.points.values())
    return Targets(row.points[high].rps / ceiling.best, naive_ratio, tail_ok)


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1e3:.1f}"


def _ratio(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def _table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        print(f"\n{title}")
        print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
        for r in rows:
            print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
        return
    table = Table()
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i < 2 else "right", no_wrap=True)
    for r in rows:
        table.add_row(*r)
    console = Console(width=220)  # wide enough for every column when stdout is not a terminal
    console.print(f"\n[bold]{title}[/bold]", highlight=False)
    console.print(table)


def render(ceiling: Ceiling, rows: Sequence[Row], overhead: Sequence[Row], seq: int) -> None:
    _table(
        f"In-process onnxruntime ceiling (seq {seq}, intra-op threads {ceiling.threads})",
        ["batch", "examples/s", "ms/batch"],
        [
            [str(b), f"{r:.0f}", _ms(ceiling.latency_s[b])]
            for b, r in ceiling.examples_per_s.items()
        ],
    )
    concurrencies = sorted({c for row in rows for c in row.points})
    if not concurrencies:
        print("\nno server produced results")
    naive = {row.fmt: row for row in rows if row.server == "naive"}
    headers = ["server", "body"]
    headers += [f"req/s c={c}" for c in concurrencies]
    headers += [f"p50/p99 ms c={c}" for c in concurrencies]
    if concurrencies:
        headers += [f"x ceil@{concurrencies[-1]}", f"x naive@{concurrencies[0]}", "targets"]
    table_rows, cpu_rows = [], []
    for row in rows:
        t = targets(row, ceiling, naive.get(row.fmt))
        if t is None:
            print(f"skipped  {row.server} / {row.fmt}: {row.note}")
            continue
        cells = [row.server, row.fmt]
        cells += [f"{row.points[c].rps:.0f}" if c in row.points else "-" for c in concurrencies]
        cells += [
            f"{_ms(row.points[c].p50)}/{_ms(row.points[c].p99)}" if c in row.points else "-"
            for c in concurrencies
        ]
        is_naive = row.server == "naive"
        cells += [
            _ratio(t.ceiling_ratio),
            "-" if is_naive else _ratio(t.naive_ratio),
            t.marks(is_naive),
        ]
        table_rows.append(cells)
        failures = sum(p.non_2xx + p.socket_errors for p in row.points.values())
        cpu = [f"{p.wrk_cpu:.2f}/{p.server_cpu:.2f}/{p.other_cpu:.2f}" for p in row.points.values()]
        cpu_rows.append([row.server, row.fmt, *cpu, str(failures)])
    best = f"{ceiling.best:.0f} ex/s at batch {ceiling.best_batch}"
    _table(f"Closed loop, one example per request (ceiling {best})", headers, table_rows)
    _table(
        "CPU (cores) in each run: wrk / server tree / rest of the machine;"
        " failed: non-2xx + socket errors",
        ["server", "body", *[f"c={c}" for c in concurrencies], "failed"],
        cpu_rows,
    )
    over_rows = [
        [r.server, r.fmt, f"{p.p50 * 1e6:.0f}", f"{p.p99 * 1e6:.0f}", f"{p.rps:.0f}"]
        for r in overhead
        for p in r.points.values()
    ]
    if over_rows:
        _table(
            "Per-request overhead: identity model, batch 1, concurrency 1",
            ["server", "body", "p50 µs", "p99 µs", "req/s"],
            over_rows,
        )
    for r in overhead:
        if not r.points:
            print(f"skipped  overhead {r.server} / {r.fmt}: {r.note}")


def _finite(value: Any) -> Any:
    """NaN and infinities become null: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_json(
    path: Path,
    meta: dict[str, Any],
    ceiling: Ceiling,
    rows: Sequence[Row],
    overhead: Sequence[Row],
) -> None:
    naive = {row.fmt: row for row in rows if row.server == "naive"}

    def row_json(row: Row) -> dict[str, Any]:
        t = targets(row, ceiling, naive.get(row.fmt))
        return {
            "server": row.server,
            "format": row.fmt,
            "note": row.note,
            "points": [asdict(p) for p in row.points.values()],
            "targets": asdict(t) if t else None,
        }

    doc = {
        "meta": meta,
        "ceiling": {
            "threads": ceiling.threads,
            "examples_per_s": ceiling.examples_per_s,
            "batch_latency_s": ceiling.latency_s,
            "best_batch": ceiling.best_batch,
            "best": ceiling.best,
            "batch1": ceiling.batch1,
        },
        "targets": {"ceiling": CEILING_TARGET, "naive": NAIVE_TARGET, "p99_over_p50": TAIL_TARGET},
        "rows": [row_json(r) for r in rows],
        "overhead": [row_json(r) for r in overhead],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(doc), indent=2) + "\n", encoding="utf-8")
    print(f"\nresults written to {path}")
