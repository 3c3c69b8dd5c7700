"""The run's tables (one instance and the single-model processes side by side, then the
traffic), the targets of issue 18 marked met or not, and the JSON."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .scenario import Part, Results

MEMORY_TARGET = 1.3  # memory per added model <= 1.3 x its weights (the ONNX file on disk)
RATIO_TARGET = 0.8  # Zipf req/s >= 0.8 x the same requests on one model

MiB = 2**20


def _mib(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value / MiB:,.1f}"


def _num(value: float, digits: int = 1) -> str:
    return "-" if not math.isfinite(value) else f"{value:,.{digits}f}"


def _table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print(
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    )
    for r in rows:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )


def _mark(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _x(value: float | None, base: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value / base:.2f} x file"


def _memory_rows(res: Results) -> list[list[str]]:
    """One instance against the single-model processes, one quantity per row."""
    s = res.singles
    loads = res.loads
    load_s = statistics.median(x["load_s"] for x in loads) if loads else math.nan
    unload_s = statistics.median(x["unload_s"] for x in loads) if loads else math.nan
    rss_start = res.rss_start.rss if res.rss_start else None
    pss_start = res.rss_start.pss if res.rss_start else None
    after = res.rss_after_traffic.rss if res.rss_after_traffic else None
    own = statistics.median(res.server_memory) if res.server_memory else None
    file_b = res.file_bytes
    single_start = statistics.median(s.start_s) if s and s.start_s else math.nan
    single_rss = statistics.median(s.rss) if s and s.rss else None
    single_pss = statistics.median(s.pss) if s and s.pss else None
    rss_sum = sum(s.rss) if s and s.rss else None
    pss_sum = sum(s.pss) if s and s.pss else None
    served = f"{s.started} of {s.asked} (ended by: {s.stopped_by})" if s else "-"
    return [
        ["models served", str(res.models), served],
        ["start (s)", f"{_num(res.start_s)} to listen (empty instance {_num(res.empty_start_s)})",
         f"{_num(s.wall_s)} in all, {_num(single_start, 2)} median each" if s else "-"],
        ["RSS (MiB)", f"{_mib(rss_start)} (empty instance {_mib(res.empty_rss)})",
         f"{_mib(rss_sum)} sum, {_mib(single_rss)} median each"],
        ["PSS (MiB)", _mib(pss_start), f"{_mib(pss_sum)} sum, {_mib(single_pss)} median each"],
        ["RSS after the traffic (MiB)", _mib(after), "-"],
        ["per model: RSS slope at start (MiB)", f"{_mib(res.slope)} = {_x(res.slope, file_b)}",
         f"{_mib(single_rss)} = {_x(single_rss, file_b)} (a process)"],
        ["per model: (RSS - empty) / N (MiB)",
         f"{_mib(res.per_model_start)} = {_x(res.per_model_start, file_b)}", "-"],
        ["  the same after the traffic (MiB)",
         f"{_mib(res.per_model_after)} = {_x(res.per_model_after, file_b)}", "-"],
        ["  the server's own figure (MiB)", f"{_mib(own)} median (/v2/resources)", "-"],
        ["ONNX file on disk (MiB)", f"{_mib(file_b)} per model", f"{_mib(file_b)} per model"],
        ["load one more / unload it (s)",
         f"{_num(load_s, 3)} / {_num(unload_s, 3)} (median of {len(loads)})", "-"],
    ]  # fmt: skip


def _traffic_row(label: str, p: Part | None) -> list[str]:
    if p is None:
        return [label, *["-"] * 11]
    r = p.result
    return [
        label, str(r.requests), _num(r.seconds, 2), _num(r.rps), _num(r.p50_ms), _num(r.p99_ms),
        str(r.errors), _num(p.mean_batch, 2), f"{p.models_hit} / {p.top_share:.0%}",
        _num(r.server_cores, 2), _num(r.generator_cores, 2), _num(r.other_cores, 2),
    ]  # fmt: skip


def render(meta: dict[str, Any], res: Results) -> None:
    cpu = meta["cpu"]
    vnni = "yes" if cpu["avx512_vnni"] else "no"
    where = f"{cpu['model']}, {cpu['cores']} cores, avx512_vnni {vnni}"
    flags = meta["args"].get("server_args") or "none (defaults)"
    _table(
        f"{res.models} versions of a small BERT (hidden 256, 4 layers) -- {where}; "
        f"eas-server flags: {flags}",
        ["", "one eas-server --model-repository", "single-model eas-server processes"],
        _memory_rows(res),
    )
    z = res.zipf.result if res.zipf else None
    title = "traffic on the instance" + (
        f": closed loop, c={z.concurrency} over {z.processes} generator processes, binary OIP"
        if z else ""
    )  # fmt: skip
    _table(
        title,
        ["", "requests", "s", "req/s", "p50 ms", "p99 ms", "errors", "mean batch",
         "models hit / top", "server cores", "generator cores", "other cores"],
        [_traffic_row(f"Zipf s={meta['args']['zipf']} over {res.models} models", res.zipf),
         _traffic_row("the same requests, all to m000", res.single)],
    )  # fmt: skip
    if z is not None and z.first_error:
        print(f"first error: {z.first_error}")
    print("\ntargets (issue 18, this machine)")
    errors = sum(p.result.errors for p in (res.zipf, res.single) if p is not None)
    ok = res.zipf is not None and errors == 0
    print(f"  no error under the traffic: {errors} errors -> {_mark(ok)}")
    print(
        f"  throughput >= {RATIO_TARGET} x one model: {_num(res.ratio, 2)} -> "
        f"{_mark(res.ratio >= RATIO_TARGET)}"
    )
    known = [v for v in (res.slope, res.per_model_start) if math.isfinite(v)]
    per = max(known) / res.file_bytes if known else math.nan
    print(
        f"  memory per added model <= {MEMORY_TARGET} x its weights: {_num(per, 2)} x "
        f"(the larger of slope and (RSS - empty) / N) -> {_mark(per <= MEMORY_TARGET)}"
    )
    loads = res.loads
    if loads:
        print(
            f"  load one more model: {_num(statistics.median(x['load_s'] for x in loads), 3)} s,"
            f" unload it: {_num(statistics.median(x['unload_s'] for x in loads), 3)} s (reported)"
        )
    for e in res.errors:
        print(f"error: {e}")
    busy = max((p.result.other_cores for p in (res.zipf, res.single) if p is not None), default=0.0)
    if busy > 0.2:
        print(
            f"warning: up to {busy:.2f} cores of other work during the traffic: numbers distorted"
        )


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(path: Path, meta: dict[str, Any], res: Results) -> None:
    doc = {
        "meta": meta,
        "targets": {
            "memory_per_model_x_weights": MEMORY_TARGET,
            "zipf_over_one_model": RATIO_TARGET,
        },
        "results": res.json(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(doc), indent=2) + "\n", encoding="utf-8")
    print(f"\nresults written to {path}")
