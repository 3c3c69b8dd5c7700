"""Phase ``seed``: the seed's table shape (issue 16 point 5), client side through the SDK.

Per row (processor onnx | blade x workers 1, 2 x max batch 8, 12, 16; then the best blade row
again with ``--frontends 1``): ``taskset -c 0-3 eas-server --max-batch-size B
--max-batch-timeout-ms 5 --max-queue-size 256 --workers W --store sqlite:///WORK/seed-store.db
--service S``, the route table of ``bert`` published to that store as the control plane would
(``blade_aspect.on_publish``; blade metadata as ``on_deploy`` records it), then ``taskset -c 4-15
autoai bench bert --store ... --concurrency 32`` with ``--processes 8`` where the CLI has it:
client QPS and RT from the SDK's calls, server QPS and RT from the instance's ``/metrics`` (both
``autoai bench``'s own figures), plus the server's CPU and GPU sampled here.

The model is ``bert-base-pooled.onnx`` / the ``blade-64`` artifact (``sentence_embedding`` is the
only output): ``autoai bench`` cannot ask for one output, and the per-token output (196 KB per
answer at seq 64) is not what the seed's clients fetched. Every request is the longest of the 64
sentences (64 real tokens; ``--input`` arrays: autoai bench sends one request), so blade's
padding trim gains nothing from short rows.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoai.schema import BladeMeta, PublishRoute, RouteEntry, RouteTable, Signature
from blade_aspect import on_publish
from config_store import open_store

from .gpu_meter import Nvml, Sampler, WindowStats
from .gpu_report import Sink, Table, fmt
from .gpu_serve import server_command
from .gpu_setup import NAME, Paths, Profile, load_inputs, python
from .servers import ServerStartError, start_listening

__all__ = ["run"]

SEED = (
    "seed (its own hardware): blade, workers 1, batch 8: 585 QPS / 28.6 ms client, "
    "620 / 19.5 ms server"
)
COLUMNS = [
    *("processor", "workers", "max batch", "front ends", "QPS", "client RT ms", "p50", "p99"),
    *("server QPS", "server RT ms", "batch", "errors", "gen cores", "server cores≈"),
    *("GPU util %", "GPU MiB"),
]
GOAL_QPS, GOAL_RT_MS = 11_700.0, 14.3


@dataclass
class Row:
    processor: str
    workers: int
    max_batch: int
    frontends: int | None
    bench: dict[str, Any]
    window: WindowStats
    error: str = ""
    seconds: float = 0.0  # the whole row: server start, bench, stop

    @property
    def step(self) -> dict[str, Any]:
        steps = self.bench.get("steps") or [{}]
        return dict(steps[0])

    def _get(self, side: str, key: str, sub: str | None) -> Any:
        value = (self.step.get(side) or {}).get(key)
        return value.get(sub) if sub is not None and isinstance(value, dict) else value

    def client(self, key: str, sub: str | None = None) -> float | None:
        """A number of the client side (``autoai bench --json``), None where absent."""
        value = self._get("client", key, sub)
        return float(value) if isinstance(value, int | float) else None

    def server(self, key: str, sub: str | None = None) -> float | None:
        value = self._get("server", key, sub)
        return float(value) if isinstance(value, int | float) else None

    @property
    def errors(self) -> str:
        if self.error:
            return self.error[:60]
        counts = self._get("client", "errors", None)
        return str(sum(counts.values())) if isinstance(counts, dict) else "-"

    @property
    def generator_cores(self) -> float | None:
        """The generator's CPU (all its processes) in cores, as autoai bench reports it."""
        gen = self.step.get("generator") or {}
        if isinstance(gen.get("cpu_cores"), int | float):
            return float(gen["cpu_cores"])
        percent = gen.get("cpu_percent")
        return float(percent) / 100 if isinstance(percent, int | float) else None


def service_label(row: Row) -> str:
    fe = "" if row.frontends is None else f" --frontends {row.frontends}"
    return f"{row.processor} workers {row.workers} batch {row.max_batch}{fe}"


@functools.cache
def _taskset() -> str | None:
    found = shutil.which("taskset")
    if found is None:
        print("warning: no taskset here: the server and the generator are not pinned")
    return found


def taskset(cpus: str | None) -> list[str]:
    """``taskset -c CPUS``; nothing without CPUS, or where taskset is missing."""
    found = _taskset() if cpus else None
    return [found, "-c", cpus] if found and cpus else []


def bench_has(flag: str) -> bool:
    """Whether ``autoai bench`` has ``flag`` (``--processes`` came after the first versions)."""
    cmd = [python(), "-m", "autoai.cli", "bench", "--help"]
    env = {**os.environ, "COLUMNS": "200"}
    return flag in subprocess.run(cmd, capture_output=True, text=True, env=env).stdout


def blade_meta(artifact: Path, max_batch: int) -> dict[str, Any]:
    """The route metadata ``blade_aspect.on_deploy`` records for this artifact."""
    doc = json.loads((artifact / "blade.json").read_text())
    provider = (doc.get("runtime") or {}).get("provider", "cpu")
    return {
        "engine": f"ort-{provider}-{doc.get('candidate', 'plain')}",
        "profiles": {"batch": [1, max_batch], "seq": None},
        "report_sha256": hashlib.sha256((artifact / "report.json").read_bytes()).hexdigest(),
    }


def publish(
    store_url: str, service: str, processor: str, model: Path, max_batch: int, url: str
) -> None:
    """The route table of ``bert``: one route, version 1, to ``service``; the signature is the
    instance's metadata."""
    with urllib.request.urlopen(f"{url}/v2/models/{NAME}", timeout=10) as response:
        meta = json.loads(response.read())
    keys = ("name", "datatype", "shape")
    signature = {k: [{f: t[f] for f in keys} for t in meta[k]] for k in ("inputs", "outputs")}
    blade = BladeMeta.model_validate(blade_meta(model, max_batch)) if processor == "blade" else None
    served = RouteEntry(version="1", weight=100, service=service, processor=processor, blade=blade)
    entry = on_publish(PublishRoute(version="1", weight=100), served)
    table = RouteTable(
        schema_version=1,
        model=NAME,
        revision=0,
        routes=(entry,),
        signature=Signature.model_validate(signature),
    )
    store = open_store(store_url, snapshot_dir=False, failover_dir=False)
    try:
        store.publish(NAME, table.model_dump_json().encode(), group="models")
        deadline = time.monotonic() + 30
        while not store.instances(service) and time.monotonic() < deadline:
            time.sleep(0.2)  # the instance registers once ready
    finally:
        store.close()


def bench_command(
    profile: Profile, store_url: str, request: dict[str, Path], flags: list[str]
) -> list[str]:
    """``autoai bench bert --store ...`` on the generator's cores, one request given as arrays."""
    cmd = [*taskset(profile.generator_cpus), python(), "-m", "autoai.cli", "bench", NAME]
    cmd += ["--store", store_url, "--concurrency", str(profile.seed_concurrency)]
    cmd += [f"--duration={profile.seed_window_s}s", f"--warmup={profile.seed_warmup_s}s"]
    cmd += [f"--input={name}=@{path}" for name, path in request.items()]
    return [*cmd, *flags, "--json"]


def run_row(
    profile: Profile,
    paths: Paths,
    nvml: Nvml,
    store_url: str,
    request: dict[str, Path],
    flags: list[str],
    processor: str,
    workers: int,
    batch: int,
    frontends: int | None,
) -> Row:
    fe = [] if frontends is None else ["--frontends", str(frontends)]
    service = f"{NAME}-{processor}-w{workers}-b{batch}"
    service += "" if frontends is None else f"-fe{frontends}"
    model = paths.pooled if processor == "onnx" else paths.blade_seed
    extra = ["--max-queue-size", "256", "--workers", str(workers)]
    extra += ["--store", store_url, "--service", service, *fe]
    cmd = taskset(profile.server_cpus) + server_command(model, processor, batch, *extra)
    baseline = nvml.memory_used_mib()
    try:
        server = start_listening(service, cmd, paths.logs / f"seed-{service}.log", 600)
    except ServerStartError as exc:
        return Row(processor, workers, batch, frontends, {}, WindowStats(), f"did not start: {exc}")
    try:
        publish(store_url, service, processor, model, batch, server.url)
        bench = bench_command(profile, store_url, request, flags)
        with Sampler(nvml, server.pid, baseline) as sampler:
            done = subprocess.run(bench, capture_output=True, text=True, timeout=300)
            end = time.monotonic() - 0.4  # its window ended just before it printed and exited
        window = sampler.between(end - 0.8 * profile.seed_window_s, end)
        if done.returncode != 0:
            why = f"autoai bench exited {done.returncode}: {done.stderr.strip()[-400:]}"
            return Row(processor, workers, batch, frontends, {}, window, why)
        return Row(processor, workers, batch, frontends, json.loads(done.stdout), window)
    finally:
        server.stop()


def _request_files(paths: Paths) -> dict[str, Path]:
    files = {}
    for name, array in load_inputs().longest_short().items():
        files[name] = paths.work / f"seed-{name}.npy"
        np.save(files[name], array)
    return files


def _table(rows: list[Row], where: str, profile: Profile, flags: list[str]) -> Table:
    t = Table(
        f"seed table shape: {profile.model} seq 64, c={profile.seed_concurrency}, server on cpus "
        f"{profile.server_cpus or 'all'} ({where})",
        COLUMNS,
    )
    for r in rows:
        t.add(
            r.processor,
            r.workers,
            r.max_batch,
            "auto" if r.frontends is None else r.frontends,
            fmt(r.client("qps"), 0, comma=True),
            fmt(r.client("rt_ms", "mean"), 2),
            fmt(r.client("rt_ms", "p50"), 2),
            fmt(r.client("rt_ms", "p99"), 2),
            fmt(r.server("qps"), 0, comma=True),
            fmt(r.server("rt_ms", "mean"), 2),
            fmt(r.server("batch_size"), 2),
            r.errors,
            fmt(r.generator_cores, 2),
            fmt(r.window.server_cores, 2),
            fmt(r.window.gpu_util, 0),
            fmt(r.window.server_gpu_mib, 0, comma=True),
        )
    t.note = (
        f"client = autoai bench through the SDK ({' '.join(flags) or 'one generator process'}), "
        f"{profile.seed_warmup_s:g} s warm-up + {profile.seed_window_s:g} s; RT = mean; server = "
        "eas_request_duration_seconds deltas from /metrics; server cores≈ over the bench's window "
        "as sampled here; GPU MiB = the server's processes (per NVML, else device delta)\n" + SEED
    )
    return t


def goal(rows: list[Row]) -> list[tuple[str, bool | None]]:
    blade = [r for r in rows if r.processor == "blade" and r.frontends is None and r.client("qps")]
    out: list[tuple[str, bool | None]] = []
    if blade:
        best = max(blade, key=lambda r: r.client("qps") or 0.0)
        qps, rt = best.client("qps") or 0.0, best.client("rt_ms", "mean") or float("inf")
        out.append(
            (
                f"best blade row (workers {best.workers}, batch {best.max_batch}) {qps:,.0f} "
                f"QPS >= {GOAL_QPS:,.0f} at client RT {rt:.2f} ms <= {GOAL_RT_MS} ms "
                f"({qps / 585:.1f}x the seed)",
                qps >= GOAL_QPS and rt <= GOAL_RT_MS,
            )
        )
    for r in blade:
        onnx = next(
            (
                o
                for o in rows
                if o.processor == "onnx" and (o.workers, o.max_batch) == (r.workers, r.max_batch)
            ),
            None,
        )
        if onnx is None or not onnx.client("qps"):
            continue
        a, b = r.client("qps") or 0.0, onnx.client("qps") or 0.0
        out.append(
            (f"workers {r.workers} batch {r.max_batch}: blade {a:,.0f} > onnx {b:,.0f} QPS", a > b)
        )
    return out


def estimate(rows: list[Row], processor: str, workers: int) -> float:
    """Seconds the next row will take: the longest like it so far (start-up grows with the
    workers: each loads its own sessions), else 60."""
    same = [r.seconds for r in rows if (r.processor, r.workers) == (processor, workers)]
    scaled = [r.seconds * workers / r.workers for r in rows if r.processor == processor]
    return max(same or scaled or [60.0])


def run(profile: Profile, paths: Paths, sink: Sink, where: str, nvml: Nvml) -> None:
    started = time.monotonic()
    db = paths.work / "seed-store.db"
    for path in db.parent.glob(db.name + "*"):
        path.unlink()
    store_url = f"sqlite:///{db}"
    request = _request_files(paths)
    flags = [f"--processes={profile.processes}"] if bench_has("--processes") else []
    if not flags:
        sink.say("note: autoai bench has no --processes here: one generator process")
    plan: list[tuple[str, int, int, int | None]] = [
        (p, w, b, None)
        for w in profile.seed_workers
        for b in profile.seed_batches
        for p in ("onnx", "blade")
    ]
    rows: list[Row] = []
    while plan:
        processor, workers, batch, frontends = plan.pop(0)
        t0 = time.monotonic()
        if t0 - started + estimate(rows, processor, workers) > profile.budget_s:
            sink.say(f"skipped {processor} w{workers} b{batch}: the phase's time is spent")
            continue
        try:
            row = run_row(
                profile,
                paths,
                nvml,
                store_url,
                request,
                flags,
                processor,
                workers,
                batch,
                frontends,
            )
        except Exception as exc:  # one row's failure must not lose the others' figures
            row = Row(processor, workers, batch, frontends, {}, WindowStats(), f"failed: {exc!r}")
        row.seconds = time.monotonic() - t0
        rows.append(row)
        qps = fmt(row.client("qps"), 0)
        print(f"  {service_label(row)}: {qps} QPS {row.error}", flush=True)
        sink.record("rows", rows)
        if not plan and frontends is None:
            ok = [r for r in rows if r.processor == "blade" and r.client("qps")]
            if ok:
                best = max(ok, key=lambda r: r.client("qps") or 0.0)
                plan.append(("blade", best.workers, best.max_batch, 1))
    sink.table(_table(rows, where, profile, flags))
    verdicts = goal(rows)
    sink.record("goal", verdicts)
    sink.say(f"\n=== goal (issue 16 point 5; {where}) ===")
    for text, met in verdicts:
        sink.say(f"  [{'met' if met else 'NOT met' if met is not None else 'n/a'}] {text}")
