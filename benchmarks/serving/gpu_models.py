"""Phase ``models``: GPU memory per hosted blade model, and one instance serving many (issue 18).

Over the blade artifact the ``optimize`` phase leaves (WORK/blade-128: BERT-base shapes, fp16,
one CUDA graph per bucket, all buckets on one ONNX Runtime session):

- (a) one process loads 1, 2, 4, ... up to N copies (default 24; it stops at the first
  out-of-memory), GPU memory used after each: memory per added model. Before them, two copies
  with ``cuda_graph`` off (the session alone, created) and the graphs' part: a graphed copy's
  memory minus a plain one's. Beside them the fp16 weights (sum of the initializers' bytes).
- (b) one process holding one runtime (what one eas-server per version costs): models per card.
- (c) where eas-server's repository mode exists: one instance hosting 1, 10 and 100 copies
  (``R/m{i}/1`` -> the artifact), batch-1 requests spread uniformly and Zipf(1.1) over them at
  concurrency 64 (``gpu_load``), with the instance's GPU memory.

(a) and (b) run in child processes, so that this one never holds a CUDA context and each
reading is the device's used memory as the child moves it. GPU memory comes from NVML
(``pynvml``) or else ``nvidia-smi``; with ``--provider cpu`` (a dry run) it is the child's RSS.

    python -m benchmarks.serving.gpu models --work /root/work --out $OUT    # the GPU phase
    python -m benchmarks.serving.gpu_models --artifact DIR --provider cpu --max-models 4 \\
        --serve 1,4 --concurrency 8 --window 2 --out /tmp/models              # a CPU dry run

The phase reads ``GPU_MODELS_PARTS`` (default ``abc``), ``GPU_MODELS_N`` and ``GPU_MODELS_SERVE``
(default ``1,10,100``) to run less when device time is short.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import bodies
from .gpu_load import LoadResult, closed_loop, http_messages
from .gpu_meter import Nvml, Watch, WindowStats
from .gpu_report import Sink, Table, fmt
from .gpu_setup import OUTPUT, Paths, Profile, python
from .servers import ServerStartError, start_listening

__all__ = ["Plan", "run"]

MIB = 1 << 20
H100_MIB = 81_559
"""What an H100 80GB HBM3 reports as its memory: the card the issue counts models per."""
COLUMNS = [
    *("part", "what", "models", "memory MiB", "per model MiB", "x weights"),
    *("load s", "req/s", "p50 ms", "p99 ms", "errors", "server cores", "GPU util %"),
]
_OOM = ("out of memory", "outofmemory", "failed to allocate", "cuda failure 2:", "cudaerrormemory")


@dataclass(frozen=True)
class Plan:
    """What one run measures."""

    artifact: Path
    provider: str  # cuda | cpu (the dry run: RSS instead of GPU memory)
    max_models: int
    serve: tuple[int, ...]
    parts: str  # any of "abc"
    concurrency: int
    processes: int
    warmup_s: float
    window_s: float
    work: Path
    budget_s: float


# ------------------------------------------------------------------------------------ memory


def gpu_used_mib() -> tuple[float, float] | None:
    """(used, total) MiB of GPU 0: NVML where ``pynvml`` imports, else ``nvidia-smi``."""
    try:
        import pynvml  # type: ignore[import-not-found,import-untyped,unused-ignore]

        pynvml.nvmlInit()
        info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0))
        return float(info.used) / MIB, float(info.total) / MIB
    except Exception:  # no nvidia-ml-py, no driver: ask nvidia-smi
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    query = "--query-gpu=memory.used,memory.total"
    done = subprocess.run(
        [smi, query, "--format=csv,noheader,nounits", "-i", "0"],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        used, total = (float(v) for v in done.stdout.strip().splitlines()[0].split(","))
    except (ValueError, IndexError):
        return None
    return used, total


def _reading(provider: str) -> float:
    """What a child reports: the GPU's used MiB, or (dry run) its own RSS in MiB."""
    if provider == "cuda":
        got = gpu_used_mib()
        if got is None:
            raise SystemExit("no GPU memory reading (neither pynvml nor nvidia-smi)")
        return got[0]
    import psutil

    return float(psutil.Process().memory_info().rss) / MIB


def weights_bytes(model: Path) -> int:
    """Bytes of the model's initializers as stored (fp16 ones at 2 bytes each)."""
    import onnx
    from onnx import helper

    proto = onnx.load(str(model), load_external_data=False)
    total = 0
    for init in proto.graph.initializer:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
        total += int(np.prod(init.dims, dtype=np.int64)) * itemsize
    return total


# ------------------------------------------------------------------------------ child side


def _emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower().replace(" ", "")
    return any(marker.replace(" ", "") in text for marker in _OOM)


def _load(artifact: Path, provider: str, cuda_graph: bool | None = None) -> tuple[Any, Any]:
    """A runtime of the artifact as the blade processor makes it, and its reference inputs."""
    from blade import BladeRuntime, load_artifact

    art = load_artifact(artifact)
    config = replace(art.runtime, provider=provider)
    if cuda_graph is not None:
        config = replace(config, cuda_graph=cuda_graph)
    runtime = BladeRuntime(art.model_path, config)
    if provider == "cpu" and config.buckets and config.cuda_graph:
        runtime._add_buckets("cpu")  # the dry run binds the buckets as the GPU would
    inputs, _ = art.reference()
    return runtime, inputs


def child_copies(artifact: Path, provider: str, max_models: int) -> None:
    """(a): readings as copies are added, one JSON line each (a crash keeps what came before)."""
    _emit(event="start", used=_reading(provider))
    plain: list[Any] = []
    for i in (1, 2):
        t0 = time.perf_counter()
        runtime, _ = _load(artifact, provider, cuda_graph=False)
        plain.append(runtime)
        _emit(event="plain", models=i, used=_reading(provider), s=time.perf_counter() - t0)
    plain.clear()
    gc.collect()
    _emit(event="freed", used=_reading(provider))
    held: list[Any] = []
    steps = set(_doublings(max_models))
    for k in range(1, max_models + 1):
        t0 = time.perf_counter()
        try:
            runtime, inputs = _load(artifact, provider)
            runtime.run(inputs)  # the processor's start-up verification does this much
        except Exception as exc:
            _emit(event="stop", models=k - 1, oom=_is_oom(exc), error=str(exc)[:300])
            return
        held.append(runtime)
        if k in steps:
            _emit(event="graph", models=k, used=_reading(provider), s=time.perf_counter() - t0)
    _emit(event="done", models=len(held))


def child_one(artifact: Path, provider: str) -> None:
    """(b): what one process that serves one model holds (runtime loaded, reference run)."""
    import psutil

    before = _reading(provider)
    t0 = time.perf_counter()
    runtime, inputs = _load(artifact, provider)
    runtime.run(inputs)
    rss = float(psutil.Process().memory_info().rss) / MIB
    _emit(event="one", before=before, used=_reading(provider), rss=rss, s=time.perf_counter() - t0)


def _doublings(n: int) -> Iterator[int]:
    k = 1
    while k < n:
        yield k
        k *= 2
    yield n


def _child(mode: str, plan: Plan, timeout_s: float) -> list[dict[str, Any]]:
    cmd = [python(), "-m", "benchmarks.serving.gpu_models", "--child", mode]
    cmd += ["--artifact", str(plan.artifact), "--provider", plan.provider]
    cmd += ["--max-models", str(plan.max_models)]
    try:
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=min(max(30.0, timeout_s), 3600.0),
            check=False,
        )
        out, err, code = done.stdout, done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err, code = "timed out", -1
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if code != 0:
        lines.append({"event": "exit", "code": code, "stderr": err.strip()[-500:]})
    return lines


# ----------------------------------------------------------------------------- parent side


def _row(
    table: Table,
    part: str,
    what: str,
    models: int,
    held_mib: float | None,
    weights_mib: float | None,
    seconds: float | None,
    shown: str | None = None,
    load: LoadResult | None = None,
    stats: WindowStats | None = None,
) -> None:
    """One row of the table: memory (per model, as a multiple of the weights), then the load."""
    per = None if held_mib is None else held_mib / max(1, models)
    times = None if per is None or not weights_mib else per / weights_mib
    cells = [part, what, shown or str(models), fmt(held_mib, 0, comma=True), fmt(per, 0)]
    cells += [fmt(times, 2), fmt(seconds, 1)]
    if load is None:
        cells += ["-"] * 6
    else:
        cells += [fmt(load.rps, 0, comma=True), fmt(load.p50_ms, 2), fmt(load.p99_ms, 2)]
        cells += [str(load.errors), fmt(stats.server_cores if stats else None, 2)]
        cells += [fmt(stats.gpu_util if stats else None, 0)]
    table.add(*cells)


def part_a(plan: Plan, table: Table, sink: Sink, weights_mib: float, left_s: float) -> None:
    lines = _child("copies", plan, left_s)
    sink.record("a_copies", lines)
    by = {e["event"]: e for e in lines}
    plain = [e for e in lines if e["event"] == "plain"]
    graph = [e for e in lines if e["event"] == "graph"]
    if len(plain) == 2:
        per_plain = plain[1]["used"] - plain[0]["used"]
        _row(table, "a", "session only (no graphs), 2nd copy", 1, per_plain, weights_mib,
             plain[1]["s"])  # fmt: skip
    freed = by.get("freed", {}).get("used")
    for e in graph:
        if freed is None:
            break
        added = e["used"] - freed
        _row(table, "a", "graphed copies in one process", e["models"], added, weights_mib, e["s"])
    if len(plain) == 2 and len(graph) >= 2:
        # steady state: the first graphed copy may reuse what the freed plain copies left cached
        steady = (graph[-1]["used"] - graph[0]["used"]) / (graph[-1]["models"] - 1)
        graphs = steady - (plain[1]["used"] - plain[0]["used"])
        sink.record("a_graph_part_mib", graphs)
        table.note += (
            f"\n(a) CUDA-graph part of a copy (graphed copies 1..{graph[-1]['models']}, "
            f"{steady:,.0f} MiB each, minus session only): {graphs:,.0f} MiB"
        )
    start = by.get("start", {}).get("used")
    if plan.provider == "cuda" and graph and freed is not None and start is not None:
        per = (graph[-1]["used"] - freed) / graph[-1]["models"]
        fits = int((H100_MIB - (freed - start)) // per) if per > 0 else None
        sink.record("a_models_per_80gb", fits)
        table.note += (
            f"\n(a) at {per:,.0f} MiB per model: {fits} models in one process per 80 GB card"
        )
    stop = by.get("stop") or by.get("exit")
    if stop:
        table.note += f"\n(a) stopped after {stop.get('models', '?')} copies: {stop}"


def part_b(plan: Plan, table: Table, sink: Sink, weights_mib: float, left_s: float) -> None:
    lines = _child("one", plan, left_s)
    sink.record("b_one_process", lines)
    one = next((e for e in lines if e["event"] == "one"), None)
    if one is None:
        table.note += f"\n(b) failed: {lines[-1] if lines else 'no output'}"
        return
    held = one["used"] - one["before"] if plan.provider == "cuda" else one["rss"]
    total = gpu_used_mib() if plan.provider == "cuda" else None
    per_card = int(total[1] // held) if total and held > 0 else None
    per_80gb = int(H100_MIB // held) if plan.provider == "cuda" and held > 0 else None
    sink.record("b_models_per_card", {"this card": per_card, "80 GB card": per_80gb})
    _row(table, "b", "one process, one runtime", 1, held, weights_mib, one["s"])
    if per_card is not None:
        table.note += (
            f"\n(b) one process per model: {per_card} models on this card "
            f"({total[1] if total else 0:,.0f} MiB), {per_80gb} on an 80 GB card"
        )


def repository(plan: Plan, n: int) -> Path:
    """``WORK/models-repo-N/m{i}/1`` -> the artifact (symbolic links: one copy on disk)."""
    root = plan.work / f"models-repo-{n}"
    if root.exists():
        shutil.rmtree(root)
    for i in range(n):
        (root / f"m{i}").mkdir(parents=True)
        (root / f"m{i}" / "1").symlink_to(plan.artifact.resolve(), target_is_directory=True)
    return root


def _post(url: str, doc: Any = None) -> Any:
    data = json.dumps(doc or {}).encode()
    request = urllib.request.Request(url, data=data, method="POST")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"null")


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def traffic(
    names: list[str],
    dist: str,
    rows: list[dict[str, np.ndarray]],
    output: str,
    count: int = 4096,
    seed: int = 0,
) -> tuple[list[str], list[bodies.Body], float]:
    """``count`` (path, body) pairs over ``names``: uniform or Zipf(1.1) by rank; and the
    share of the hottest model."""
    rng = np.random.default_rng(seed)
    n = len(names)
    weights = np.ones(n) if dist == "uniform" else 1.0 / np.arange(1, n + 1) ** 1.1
    p = weights / weights.sum()
    picks = rng.choice(n, size=count, p=p)
    encoded = [bodies.encode(r, [output], "binary") for r in rows]
    paths = [f"/v2/models/{names[i]}/infer" for i in picks]
    chosen = [encoded[j % len(encoded)] for j in range(count)]
    return paths, chosen, float(p.max())


def part_c(plan: Plan, table: Table, sink: Sink, nvml: Nvml, deadline: float) -> None:
    from blade import load_artifact

    if importlib.util.find_spec("eas_server.repository") is None:
        table.note += "\n(c) skipped: this eas-server has no repository mode"
        return
    art = load_artifact(plan.artifact)
    inputs, _ = art.reference()
    rows = [
        {k: v[i : i + 1] for k, v in inputs.items()}
        for i in range(len(next(iter(inputs.values()))))
    ]
    outputs = [o["name"] for o in art.doc["signature"]["outputs"]]
    output = OUTPUT if OUTPUT in outputs else outputs[0]
    results: list[dict[str, Any]] = []
    for n in plan.serve:
        left = deadline - time.monotonic()
        if left < 2 * (plan.warmup_s + plan.window_s) + 60:
            table.note += f"\n(c) {n} models: skipped, {left:.0f} s of the budget left"
            continue
        root = repository(plan, n)
        before = gpu_used_mib() if plan.provider == "cuda" else None
        cmd = [python(), "-m", "eas_server", "--model-repository", str(root), "--port", "0"]
        cmd += ["--max-batch-size", "32", "--max-batch-timeout-ms", "5"]
        t0 = time.monotonic()
        try:
            server = start_listening(
                f"repo-{n}",
                cmd,
                plan.work / f"models-repo-{n}.log",
                timeout_s=left - 2 * (plan.warmup_s + plan.window_s) - 20,
            )
        except ServerStartError as exc:
            table.note += f"\n(c) {n} models: did not start: {str(exc)[-300:]}"
            continue
        load_s = time.monotonic() - t0
        try:
            index = _post(server.url + "/v2/repository/index", {"ready": True})
            ready = sorted(
                {m["name"] for m in index if m.get("state") == "READY"}, key=lambda s: int(s[1:])
            )
            resources = _get(server.url + "/v2/resources")
            # the processor each copy got (a blade artifact holds a model.onnx too)
            procs = "/".join(sorted({str(m.get("processor")) for m in resources.get("models", [])}))
            after = gpu_used_mib() if plan.provider == "cuda" else None
            held = after[0] - before[0] if after and before else None
            if held is None:
                held = resources.get("rss_bytes", 0) / MIB
            entry: dict[str, Any] = {
                "models": n,
                "ready": len(ready),
                "load_s": load_s,
                "memory_mib": held,
                "resources": resources,
            }
            for dist in ("uniform", "zipf") if n > 1 else ("uniform",):
                paths, chosen, hottest = traffic(ready, dist, rows, output)
                messages = [
                    http_messages(server.url, path, [body])[0]
                    for path, body in zip(paths, chosen, strict=True)
                ]
                watch = Watch(nvml, server.pid, before[0] if before else None)
                result = closed_loop(
                    server.url,
                    messages,
                    plan.concurrency,
                    processes=plan.processes,
                    warmup_s=plan.warmup_s,
                    window_s=plan.window_s,
                    window=watch,
                )
                entry[dist] = {"load": result, "window": watch.stats, "hottest_share": hottest}
                label = f"instance ({procs}), {dist}"
                label += f" (hottest {hottest:.0%})" if n > 1 else ""
                _row(table, "c", label, len(ready), held, None, load_s, f"{len(ready)}/{n}",
                     result, watch.stats)  # fmt: skip
                if result.first_error:
                    entry[dist]["first_error"] = result.first_error
            results.append(entry)
            sink.record("c_serve", results)
            first = results[0]
            if n > first["models"] and len(ready) > first["ready"]:
                added = (held - first["memory_mib"]) / (len(ready) - first["ready"])
                table.note += f"\n(c) {n} models: {added:,.0f} MiB per model added to the instance"
        finally:
            server.stop()
            shutil.rmtree(root, ignore_errors=True)


def measure(plan: Plan, sink: Sink, where: str, nvml: Nvml) -> Table:
    """Every part the plan names, one table (printed and saved as it grows)."""
    t0 = time.monotonic()
    deadline = t0 + plan.budget_s
    from blade import load_artifact

    model = load_artifact(plan.artifact).model_path
    weights_mib = weights_bytes(model) / MIB
    unit = "GPU" if plan.provider == "cuda" else "RSS (dry run)"
    table = Table(f"blade models on one device, memory = {unit} ({where})", COLUMNS)
    table.note = (
        f"artifact {plan.artifact} ({model.stat().st_size / MIB:,.0f} MiB on disk), "
        f"weights {weights_mib:,.0f} MiB as stored (fp16 in a GPU artifact); (a) counts what "
        "copies add beyond the process's CUDA context, (b) and (c) all the process holds"
    )
    sink.record("plan", {k: str(v) if isinstance(v, Path) else v for k, v in asdict(plan).items()})
    sink.record("weights_mib", weights_mib)
    for part in ("b", "a", "c"):  # (b) first: it is short, and the baseline of the others
        if part not in plan.parts:
            continue
        started = time.monotonic()
        if part == "c":
            part_c(plan, table, sink, nvml, deadline)
        else:
            measure_part = part_a if part == "a" else part_b
            measure_part(plan, table, sink, weights_mib, deadline - time.monotonic())
        sink.record("rows", table.rows)  # what a run cut short still leaves
        sink.say(f"({part}) done in {time.monotonic() - started:.0f} s")
    sink.table(table)
    sink.record("elapsed_s", round(time.monotonic() - t0, 1))
    return table


def run(profile: Profile, paths: Paths, sink: Sink, where: str, nvml: Nvml) -> None:
    """The ``models`` phase of ``benchmarks.serving.gpu`` (the smoke: CPU, small counts)."""
    smoke = profile.smoke
    serve = os.environ.get("GPU_MODELS_SERVE", "1,4" if smoke else "1,10,100")
    plan = Plan(
        artifact=paths.blade_serve,
        provider=profile.device,
        max_models=int(os.environ.get("GPU_MODELS_N", "4" if smoke else "24")),
        serve=tuple(int(v) for v in serve.split(",") if v),
        parts=os.environ.get("GPU_MODELS_PARTS", "abc"),
        concurrency=8 if smoke else 64,
        processes=profile.processes,
        warmup_s=profile.warmup_s,
        window_s=profile.window_s if smoke else 15.0,
        work=paths.work,
        budget_s=profile.budget_s,
    )
    measure(plan, sink, where, nvml)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.serving.gpu_models",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--artifact", type=Path, required=True, help="a blade artifact directory")
    p.add_argument("--provider", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--max-models", type=int, default=24, help="(a): copies in one process")
    p.add_argument("--serve", default="1,10,100", help="(c): models per instance")
    p.add_argument("--parts", default="abc")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--processes", type=int, default=8, help="load generator processes")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--window", type=float, default=15.0)
    p.add_argument("--work", type=Path, default=Path("/tmp/gpu-models"))
    p.add_argument("--budget", type=float, default=1e9, help="seconds; later parts are skipped")
    p.add_argument("--out", type=Path, default=Path("/tmp/gpu-models/out"))
    p.add_argument("--child", choices=("copies", "one"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child == "copies":
        child_copies(args.artifact, args.provider, args.max_models)
        return 0
    if args.child == "one":
        child_one(args.artifact, args.provider)
        return 0
    from .gpu_setup import machine

    nvml = Nvml()
    args.work.mkdir(parents=True, exist_ok=True)
    plan = Plan(
        artifact=args.artifact,
        provider=args.provider,
        max_models=args.max_models,
        serve=tuple(int(v) for v in args.serve.split(",") if v),
        parts=args.parts,
        concurrency=args.concurrency,
        processes=args.processes,
        warmup_s=args.warmup,
        window_s=args.window,
        work=args.work,
        budget_s=args.budget,
    )
    sink = Sink(args.out, "models")
    where = machine(nvml.name) + ("" if args.provider == "cuda" else ", DRY RUN: CPU provider")
    sink.record("machine", where)
    measure(plan, sink, where, nvml)
    return 0


if __name__ == "__main__":
    sys.exit(main())
