"""Results of a run: the issue's targets, side-by-side tables (rich if installed), and JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .ceiling import Ceiling
from .results import (
    BUSY_LIMIT,
    CEILING_TARGET,
    NAIVE_TARGET,
    TAIL_TARGET,
    ModelResult,
    Row,
    Targets,
    median,
    naive_peer,
    summary,
    targets,
)


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1e3:.1f}"


def _ratio(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def _spread(med: float, values: Sequence[float]) -> str:
    """`median [min-max]` of per-round ratios; the median alone for one round."""
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < 2:
        return _ratio(med)
    return f"{_ratio(med)} [{min(finite):.2f}-{max(finite):.2f}]"


def _table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    try:
        from rich.console import Console
        from rich.markup import escape
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
        table.add_row(*(escape(c) for c in r))
    console = Console(width=220)  # wide enough for every column when stdout is not a terminal
    console.print(f"\n[bold]{escape(title)}[/bold]", highlight=False)
    console.print(table)


def _title(m: ModelResult) -> str:
    return f"{m.key} model {m.name}, seq {m.seq}, in-process batch 1: {m.batch1_ms:.1f} ms"


def _ceilings(m: ModelResult) -> None:
    sweep, ceilings = m.sweep, m.ceilings
    _table(
        f"{_title(m)}: onnxruntime in-process ceiling (intra-op threads {sweep.threads}),"
        " all batch sizes, before the rounds",
        ["batch", "examples/s", "ms/batch"],
        [[str(b), f"{r:.0f}", _ms(sweep.latency_s[b])] for b, r in sweep.examples_per_s.items()],
    )
    batches = list(ceilings[0].examples_per_s) if ceilings else []
    per_round = [
        [str(i + 1), *(f"{c.examples_per_s[b]:.0f}" for b in batches), f"{c.other_cpu:.2f}"]
        for i, c in enumerate(ceilings)
    ]
    medians = [median([c.examples_per_s[b] for c in ceilings]) for b in batches]
    per_round.append(["median", *(f"{m:.0f}" for m in medians), "-"])
    _table(
        f"{m.name}: ceiling in each round (examples/s; other: cores busy outside this process"
        " meanwhile)",
        ["round", *(f"batch {b}" for b in batches), "other"],
        per_round,
    )


def _model(m: ModelResult) -> None:
    """One model's tables: ceilings, the servers against them, and the CPU of every run."""
    _ceilings(m)
    rows, ceilings = m.rows, m.ceilings
    concurrencies = sorted({c for row in rows for c in row.concurrencies})
    if not concurrencies:
        print(f"\n{m.name}: no server produced results")
    headers = ["server", "body"]
    headers += [f"req/s c={c}" for c in concurrencies]
    headers += [f"p50/p99 ms c={c}" for c in concurrencies]
    if concurrencies:
        headers += [f"x ceil@{concurrencies[-1]}", f"x naive@{concurrencies[0]}", "targets"]
    table_rows, cpu_rows = [], []
    for row in rows:
        t = targets(row, ceilings, naive_peer(rows, row.fmt))
        if t is None:
            print(f"skipped  {m.name}: {row.server} / {row.fmt}: {row.note}")
            continue
        sums = {c: summary(row, c) for c in concurrencies}
        cells = [row.server, row.fmt]
        cells += [f"{s.rps:.0f}" if s else "-" for s in sums.values()]
        cells += [f"{_ms(s.p50)}/{_ms(s.p99)}" if s else "-" for s in sums.values()]
        is_naive = row.server == "naive"
        cells += [
            _spread(t.ceiling_ratio, t.ceiling_ratios),
            "-" if is_naive else _spread(t.naive_ratio, t.naive_ratios),
            t.marks(is_naive),
        ]
        table_rows.append(cells)
        cpu = [
            f"{s.wrk_cpu:.2f}/{s.server_cpu:.2f}/{s.other_cpu:.2f}" if s else "-"
            for s in sums.values()
        ]
        failures = sum(s.failures for s in sums.values() if s)
        cpu_rows.append([row.server, row.fmt, *cpu, str(failures)])
        if row.note:
            print(f"note     {m.name}: {row.server} / {row.fmt}: {row.note}")
    n = max((len(r.rounds) for r in rows), default=0)
    best = median([c.best for c in ceilings])
    batch = ceilings[0].best_batch if ceilings else m.sweep.best_batch
    _table(
        f"{_title(m)}. Closed loop, one example per request: median over {n} rounds (ceiling"
        f" {best:.0f} ex/s at batch {batch}); x ceil, x naive: median [min-max] of the per-round"
        " ratios to the same round's ceiling / naive server (same body; grpc: naive binary)",
        headers,
        table_rows,
    )
    _table(
        f"{m.name}: CPU (cores) in each run: load generator (wrk; h2load for grpc) / server tree"
        " / rest of the machine (medians over rounds; rest: the largest); failed: non-2xx +"
        " socket errors + gRPC errors, all rounds",
        ["server", "body", *[f"c={c}" for c in concurrencies], "failed"],
        cpu_rows,
    )


def render(results: Sequence[ModelResult], overhead: Sequence[Row]) -> None:
    """Every model's tables, then the identity-model overhead and the busy-machine warning."""
    for m in results:
        _model(m)
    n = max((len(r.rounds) for m in results for r in m.rows), default=0)
    over_rows = [
        [
            r.server,
            r.fmt,
            f"{s.p50 * 1e6:.0f}",
            f"{s.p99 * 1e6:.0f}",
            f"{s.rps:.0f}",
            f"{s.wrk_cpu:.2f}/{s.server_cpu:.2f}",
            str(s.failures),
        ]
        for r in overhead
        for s in (summary(r, c) for c in r.concurrencies)
        if s is not None
    ]
    if over_rows:
        _table(
            "Per-request overhead: identity model, batch 1, concurrency 1"
            f" (median over {n} rounds)",
            ["server", "body", "p50 µs", "p99 µs", "req/s", "cores gen/server", "failed"],
            over_rows,
        )
    for r in overhead:
        if not r.concurrencies:
            print(f"skipped  overhead {r.server} / {r.fmt}: {r.note}")
    _busy_warning(
        [*(r for m in results for r in m.rows), *overhead],
        [c for m in results for c in m.ceilings],
        sum(m.ceiling_reruns for m in results),
    )


def _busy_warning(
    rows: Sequence[Row], ceilings: Sequence[Ceiling], ceiling_reruns: int, limit: float = BUSY_LIMIT
) -> None:
    """Say how many runs shared the machine with other work (more than `limit` cores)."""
    runs = [p.other_cpu for r in rows for points in r.rounds for p in points.values()]
    runs += [c.other_cpu for c in ceilings]
    busy = sum(1 for cores in runs if cores > limit)
    reruns = sum(r.reruns for r in rows) + ceiling_reruns
    if reruns:
        print(f"\n{reruns} runs were measured again: other work shared the machine")
    if busy:
        print(
            f"\nwarning: in {busy} of {len(runs)} runs more than {limit} cores were busy outside"
            " the server, wrk and this process: those numbers are spoiled"
        )


def _finite(value: Any) -> Any:
    """NaN and infinities become null: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _ceiling_json(c: Ceiling) -> dict[str, Any]:
    return {
        "examples_per_s": c.examples_per_s,
        "batch_latency_s": c.latency_s,
        "other_cpu": c.other_cpu,
    }


def _row_json(row: Row, t: Targets | None) -> dict[str, Any]:
    medians = {c: summary(row, c) for c in row.concurrencies}
    return {
        "server": row.server,
        "format": row.fmt,
        "note": row.note,
        "reruns": row.reruns,
        "median": {c: asdict(s) for c, s in medians.items() if s is not None},
        "rounds": [[asdict(p) for p in points.values()] for points in row.rounds],
        "targets": asdict(t) if t else None,
    }


def _model_json(m: ModelResult) -> dict[str, Any]:
    return {
        "key": m.key,
        "name": m.name,
        "seq": m.seq,
        "batch1_ms": m.batch1_ms,
        "ceiling": {
            "threads": m.sweep.threads,
            "sweep": {**_ceiling_json(m.sweep), "best_batch": m.sweep.best_batch},
            "rounds": [_ceiling_json(c) for c in m.ceilings],
            "reruns": m.ceiling_reruns,
            "best": median([c.best for c in m.ceilings]),
            "batch1": median([c.batch1 for c in m.ceilings]),
        },
        "rows": [_row_json(r, targets(r, m.ceilings, naive_peer(m.rows, r.fmt))) for r in m.rows],
    }


def write_json(
    path: Path,
    meta: dict[str, Any],
    results: Sequence[ModelResult],
    overhead: Sequence[Row],
) -> None:
    doc = {
        "meta": meta,
        "targets": {"ceiling": CEILING_TARGET, "naive": NAIVE_TARGET, "p99_over_p50": TAIL_TARGET},
        "models": [_model_json(m) for m in results],
        "overhead": [_row_json(r, None) for r in overhead],  # no targets on the identity model
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(doc), indent=2) + "\n", encoding="utf-8")
    print(f"\nresults written to {path}")
