"""Phase ``serve``: one eas-server instance, one address, end to end, against the runtime alone.

In one run: the in-process runtimes again (``gpu_inprocess``: the ratios below come from this
run), then for each server ``eas-server --model M --processor P --name bert --port 0
--max-batch-size 32 --max-batch-timeout-ms 5`` with the default front ends (auto) and, for blade,
``--frontends 1`` as the baseline: one checked request (status 200, embedding cosine >= 0.999 to
the in-process fp32 one), then a closed loop at each concurrency (``gpu_load``, batch-1 binary
OIP requests of 64 full-length seq-128 sentence rows in turn, ``sentence_embedding`` only, binary
output), measuring over the window the server's CPU (process tree), the generator's CPU, GPU
utilisation and memory. At blade's highest concurrency ``loadgen_mp.py`` (the tool of earlier H100
runs) measures the same point as a cross-check of the generator.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from autoai.testing import tree_pids

from . import bodies, gpu_inprocess
from .gpu_load import LoadResult, closed_loop, http_messages
from .gpu_meter import Nvml, Watch, WindowStats
from .gpu_report import Sink, Table, fmt
from .gpu_setup import NAME, OUTPUT, Paths, Profile, load_inputs, python
from .servers import Server, ServerStartError, start_listening

__all__ = ["run"]

INFER = f"/v2/models/{NAME}/infer"
COLUMNS = [
    *("server", "procs", "c", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors", "server cores"),
    *("gen cores", "GPU util %", "GPU MiB used", "server GPU MiB"),
]
# (processor, --frontends, --handoff; None: the default). The last row asks whether running
# batch-1 work on the executor's event loop (no worker thread hand-off) shortens RT at c=1.
SERVERS = (
    ("onnx", None, None),
    ("blade", None, None),
    ("blade", 1, None),
    ("blade", None, "inline"),
)


def label(processor: str, frontends: int | None, handoff: str | None = None) -> str:
    name = processor if frontends is None else f"{processor} --frontends {frontends}"
    return name if handoff is None else f"{name} --handoff {handoff}"


def server_command(model: Path, processor: str, max_batch: int, *extra: str) -> list[str]:
    cmd = [python(), "-m", "eas_server", "--model", str(model), "--processor", processor]
    cmd += ["--name", NAME, "--port", "0", "--max-batch-size", str(max_batch)]
    return [*cmd, "--max-batch-timeout-ms", "5", *extra]


def probe(server: Server, body: bodies.Body, expected: np.ndarray[Any, Any]) -> float:
    """One request: the cosine of its embedding to ``expected``; raises when it is not 200."""
    request = urllib.request.Request(
        server.url + INFER, data=body.data, headers=body.headers, method="POST"
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        got = bodies.decode(response.read(), dict(response.headers))[OUTPUT].reshape(-1)
    got64, ref = got.astype(np.float64), expected.astype(np.float64)
    return float(got64 @ ref / (np.linalg.norm(got64) * np.linalg.norm(ref) + 1e-30))


def cross_check(
    tool: Path, url: str, body: bodies.Body, work: Path, concurrency: int, seconds: float
) -> dict[str, Any]:
    """``loadgen_mp.py`` at one point (its own JSON line), or why it did not run."""
    if not tool.is_file():
        return {"skipped": f"loadgen_mp.py not found ({tool})"}
    path = work / "loadgen-body.bin"
    path.write_bytes(body.data)
    hlen = body.headers[bodies.HEADER]
    cmd = [python(), str(tool), "--urls", url, "--path", INFER, "--body", str(path)]
    cmd += ["--hlen", hlen, "--conc", str(concurrency), "--procs", "8", "--secs", str(seconds)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
        if done.returncode != 0:
            return {"skipped": f"loadgen_mp.py exited {done.returncode}: {done.stderr[-300:]}"}
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, ValueError, IndexError) as exc:
        return {"skipped": f"loadgen_mp.py failed: {exc!r}"}
    return result


def _cells(name: str, procs: int, r: LoadResult, w: WindowStats) -> list[str]:
    return [
        name,
        str(procs),
        str(r.concurrency),
        fmt(r.rps, 0, comma=True),
        fmt(r.p50_ms, 2),
        fmt(r.p90_ms, 2),
        fmt(r.p99_ms, 2),
        str(r.errors),
        fmt(w.server_cores, 2),
        fmt(r.generator_cores, 2),
        fmt(w.gpu_util, 0),
        fmt(w.gpu_mem_mib, 0, comma=True),
        fmt(w.server_gpu_mib, 0, comma=True),
    ]


def serve_one(
    profile: Profile,
    paths: Paths,
    sink: Sink,
    nvml: Nvml,
    processor: str,
    frontends: int | None,
    handoff: str | None,
    requests: list[bodies.Body],
    inproc: gpu_inprocess.InProcess,
    table: Table,
    tool: Path | None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Start one server, check one answer, load it at each concurrency (a row of ``table`` per
    point), then with ``tool`` cross-check the highest; the server is stopped before returning.
    Returns the points and the cross-check."""
    name = label(processor, frontends, handoff)
    model = paths.model if processor == "onnx" else paths.blade_serve
    extra = [] if frontends is None else ["--frontends", str(frontends)]
    extra += [] if handoff is None else ["--handoff", handoff]
    levels = profile.concurrency if handoff is None else profile.concurrency[:1]
    baseline = nvml.memory_used_mib()
    log = paths.logs / f"serve-{name.replace(' ', '')}.log"
    cmd = server_command(model, processor, profile.max_batch, *extra)
    try:
        server = start_listening(name, cmd, log, 600)
    except ServerStartError as exc:
        sink.say(f"{name}: did not start: {exc}")
        return [], {}
    rows: list[dict[str, Any]] = []
    checks: dict[str, Any] = {}
    try:
        cosine = probe(server, requests[0], inproc.embedding)
        procs = len(tree_pids(server.pid))
        sink.say(f"{name}: {server.url}, {procs} processes, probe cosine {cosine:.6f}")
        if cosine < 0.999:
            sink.say(f"{name}: the answer differs from the in-process one: not loaded")
            return [], {}
        messages = http_messages(server.url, INFER, requests)
        for c in levels:
            watch = Watch(nvml, server.pid, baseline)
            r = closed_loop(
                server.url,
                messages,
                c,
                processes=profile.processes,
                warmup_s=profile.warmup_s,
                window_s=profile.window_s,
                window=watch,
            )
            table.add(*_cells(name, procs, r, watch.stats))
            rows.append({"server": name, "processes": procs, "load": r, "window": watch.stats})
            print(f"  {name} c={c}: {r.rps:,.0f} req/s, p50 {r.p50_ms:.2f} ms", flush=True)
            if r.first_error:
                print(f"  {name} c={c}: {r.errors} errors, first: {r.first_error}")
        if tool is not None and rows:
            top = rows[-1]["load"]
            checks = cross_check(
                tool, server.url, requests[0], paths.work, top.concurrency, profile.window_s
            )
            checks["ours"] = top
    finally:
        server.stop()
    return rows, checks


def run(
    profile: Profile, paths: Paths, sink: Sink, where: str, nvml: Nvml, tool: Path | None
) -> None:
    started = time.monotonic()
    sentences = load_inputs()
    inproc = gpu_inprocess.measure(
        str(paths.model),
        str(paths.blade_serve),
        sentences.full,
        profile.in_process_batches,
        profile.loops,
    )
    sink.record("in_process", inproc.timings)
    sink.table(gpu_inprocess.table(inproc, where))
    requests = [bodies.encode(row, [OUTPUT], "binary") for row in bodies.rows(sentences.full, 64)]
    table = Table(
        f"eas-server end to end, batch-1 binary requests, seq 128, {OUTPUT} only ({where})",
        COLUMNS,
    )
    table.note = (
        f"closed loop, {profile.warmup_s:g} s warm-up + {profile.window_s:g} s window per point, "
        f"{profile.processes} generator processes; max batch {profile.max_batch}, batch timeout "
        "5 ms; procs = server processes (executor + front ends)"
    )
    rows: list[Any] = []
    checks: dict[str, Any] = {}
    servers = SERVERS[:3] if os.environ.get("GPU_SERVE_ONLY") == "1" else SERVERS
    for processor, frontends, handoff in servers:
        name = label(processor, frontends, handoff)
        if time.monotonic() - started > profile.budget_s - 75:
            sink.say(f"skipped {name}: the phase's time is spent")
            continue
        cross = tool if (processor, frontends, handoff) == ("blade", None, None) else None
        try:
            found, checked = serve_one(
                profile,
                paths,
                sink,
                nvml,
                processor,
                frontends,
                handoff,
                requests,
                inproc,
                table,
                cross,
            )
        except Exception as exc:  # one server's failure must not lose the others' figures
            sink.say(f"{name}: failed: {exc!r}")
            continue
        rows += found
        checks = checked or checks
        sink.record("serve", rows)
    sink.table(table)
    sink.record("loadgen_mp", checks)
    if "rps" in checks:
        ours = checks["ours"]
        sink.say(
            f"cross-check, blade c={checks['conc']}: loadgen_mp.py {checks['rps']:,.0f} req/s "
            f"p50 {checks['p50_ms']:.2f} p99 {checks['p99_ms']:.2f} ms (errors {checks['errors']})"
            f" vs gpu_load {ours.rps:,.0f} req/s p50 {ours.p50_ms:.2f} p99 {ours.p99_ms:.2f} ms"
            f" ({checks['rps'] / ours.rps:.2f}x)"
        )
    elif checks:
        sink.say(f"cross-check: {checks.get('skipped')}")
    verdicts = targets(inproc, rows, max(profile.concurrency), profile.max_batch)
    sink.record("targets", verdicts)
    sink.say(f"\n=== targets (issue 16 point 2; {where}) ===")
    for text, met in verdicts:
        sink.say(f"  [{'met' if met else 'NOT met' if met is not None else 'n/a'}] {text}")


def targets(
    inproc: gpu_inprocess.InProcess, rows: list[Any], top: int, batch: int
) -> list[tuple[str, bool | None]]:
    """The four checks, each with its figures."""

    def load(server: str, c: int) -> LoadResult | None:
        return next(
            (r["load"] for r in rows if r["server"] == server and r["load"].concurrency == c), None
        )

    out: list[tuple[str, bool | None]] = []
    e2e: dict[str, float] = {}
    ref: dict[str, float] = {}
    for processor in ("onnx", "blade"):
        r, t = load(processor, top), inproc.get(processor, batch)
        if r is None or t is None:
            out.append(
                (f"{processor}: c={top} e2e >= 0.8 x in-process b{batch}: not measured", None)
            )
            continue
        e2e[processor], ref[processor] = r.rps, t.examples_per_s
        ratio = r.rps / t.examples_per_s
        out.append(
            (
                f"{processor}: c={top} e2e {r.rps:,.0f} req/s >= 0.8 x in-process b{batch} "
                f"{t.examples_per_s:,.0f} ex/s: {ratio:.2f}x",
                ratio >= 0.8,
            )
        )
    for processor in ("onnx", "blade"):
        points = [r["load"] for r in rows if r["server"] == processor]
        bad = [
            f"c={p.concurrency} {p.p99_ms:.1f}/{p.p50_ms:.1f}"
            for p in points
            if p.p99_ms > 2 * p.p50_ms
        ]
        worst = max((p.p99_ms / p.p50_ms for p in points), default=float("nan"))
        out.append(
            (
                f"{processor}: p99 <= 2 x p50 at every c (worst p99/p50 {worst:.2f}"
                + (f"; over: {', '.join(bad)})" if bad else ")"),
                None if not points else not bad,
            )
        )
    if len(e2e) == 2:
        left, right = e2e["blade"] / e2e["onnx"], ref["blade"] / ref["onnx"]
        out.append(
            (
                f"blade/onnx e2e {left:.2f}x >= 0.9 x blade/onnx in-process {right:.2f}x "
                f"(= {0.9 * right:.2f}x)",
                left >= 0.9 * right,
            )
        )
    r1, t1 = load("blade", 1), inproc.get("blade", 1)
    if r1 is not None and t1 is not None:
        out.append(
            (
                f"blade c=1 p50 {r1.p50_ms:.3f} ms <= runtime b1 {t1.ms:.3f} + 0.35 ms",
                r1.p50_ms <= t1.ms + 0.35,
            )
        )
    return out
