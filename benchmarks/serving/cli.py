"""`python benchmarks/serving/run.py`: the whole benchmark in one run, tables and JSON last."""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from serving import bodies, ceiling, harness, loadgen, report
from serving.harness import Skip
from serving.report import Row

HERE = Path(__file__).resolve().parent
NAME = "minilm"
REQUESTS = 64  # distinct prepared bodies (real sentences) that wrk cycles through
BATCHES = (1, 2, 4, 8, 16, 32, 64)


def _cache_models() -> Path:
    cache = os.environ.get("AUTOAI_CACHE")
    return (Path(cache) if cache else Path.home() / ".cache" / "autoai") / "models"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/serving/run.py", description=__doc__)
    p.add_argument("--model", type=Path, default=_cache_models() / "minilm-l6.onnx")
    p.add_argument("--inputs", type=Path, default=None, help="default: <model stem>.inputs.npz")
    p.add_argument("--output", default="sentence_embedding", help="the output requested")
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated")
    p.add_argument("--duration", type=float, default=15.0, help="seconds per measurement")
    p.add_argument("--servers", default=",".join(harness.SERVERS), help="comma-separated")
    p.add_argument("--formats", default=",".join(bodies.FORMATS), help="json,binary")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ORT intra-op")
    p.add_argument("--no-overhead", action="store_true", help="skip the identity-model run")
    p.add_argument("--json", type=Path, default=None, help="default: results/serving-<time>.json")
    p.add_argument("--quick", action="store_true", help="3 s runs, 1 s warm-ups: a smoke run")
    return p.parse_args(argv)


def load_sample(path: Path, seq: int) -> dict[str, npt.NDArray[Any]]:
    """input_ids / attention_mask rows at `seq`: stored ones, or cut from the seq-128 rows."""
    with np.load(path) as npz:
        if f"input_ids_{seq}" in npz:
            return {k: npz[f"{k}_{seq}"] for k in ("input_ids", "attention_mask")}
        if npz["input_ids"].shape[1] < seq:
            raise SystemExit(
                f"{path} has rows of {npz['input_ids'].shape[1]} tokens, < --seq {seq}"
            )
        return {k: npz[k][:, :seq] for k in ("input_ids", "attention_mask")}


def _meta(args: argparse.Namespace, duration: float) -> dict[str, Any]:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[
        0
    ]
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "wrk": wrk_version.strip(),
        "model": str(args.model),
        "seq": args.seq,
        "duration_s": duration,
        "intra_op_threads": args.threads,
        "batching": {
            "max_batch_size": harness.MAX_BATCH_SIZE,
            "timeout_ms": harness.MAX_BATCH_TIMEOUT_MS,
        },
    }


@dataclass(frozen=True)
class Plan:
    """How every server is measured in this run."""

    formats: list[str]
    concurrencies: list[int]
    duration_s: float
    warmup_s: float
    threads: int
    workdir: Path
    wrk: str


def _measure_server(
    plan: Plan,
    kind: str,
    model: Path,
    name: str,
    requests: list[dict[str, npt.NDArray[Any]]],
    output: str,
    expected: npt.NDArray[Any],
) -> list[Row]:
    """Start `kind`, then probe and load it with each body format; always stops it."""
    rows = [Row(kind, fmt) for fmt in plan.formats]
    try:
        server = harness.start(kind, model, name, plan.workdir, plan.threads)
    except Skip as exc:
        for row in rows:
            row.note = str(exc).splitlines()[0]
        print(f"skip     {kind}: {exc}")
        return rows
    print(f"started  {kind} (pid {server.pid}) at {server.url}")
    try:
        for row in rows:
            prepared = [bodies.encode(r, [output], row.fmt) for r in requests]
            stem = f"{name}-{row.fmt}"
            paths = bodies.write(prepared, plan.workdir / "bodies", stem)
            script = loadgen.write_lua(paths, prepared, plan.workdir / f"{stem}.lua")
            url = f"{server.url}/v2/models/{name}/infer"

            def check(body: bodies.Body = prepared[0]) -> None:
                harness.probe(server, name, body, output, expected)

            try:
                check()
                harness.load_row(
                    row,
                    server,
                    url,
                    script,
                    plan.concurrencies,
                    plan.duration_s,
                    plan.warmup_s,
                    plan.wrk,
                    settle=check,
                )
            except Skip as exc:
                row.note = str(exc)
                print(f"skip     {kind} / {row.fmt}: {exc}")
    finally:
        server.stop()
    return rows


def _on_sigterm(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the servers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    if not args.model.exists():
        print(
            f"{args.model} is missing: run `python scripts/build_models.py` first", file=sys.stderr
        )
        return 2
    inputs = args.inputs or args.model.with_name(args.model.stem + ".inputs.npz")
    sample = load_sample(inputs, args.seq)
    concurrencies = sorted(int(c) for c in args.concurrency.split(","))
    duration, warmup, ceiling_s = (3.0, 1.0, 1.0) if args.quick else (args.duration, 3.0, 3.0)
    wrk = loadgen.ensure_wrk()
    meta = _meta(args, duration)
    print(f"{meta['cpu']}, {meta['cores']} cores; onnxruntime {meta['onnxruntime']}; {meta['wrk']}")
    print(f"model {args.model} (seq {args.seq}); inputs {inputs}")
    meta["loadavg_start"] = os.getloadavg()[0]
    busy = loadgen.machine_cpu()
    time.sleep(1.0)
    meta["busy_cores_before"] = busy = loadgen.machine_cpu() - busy
    if busy > 0.2:
        print(
            f"warning: {busy:.2f} cores busy before the run: other work on this machine distorts"
            " every number (see the 'rest of the machine' CPU column)"
        )

    ceil = ceiling.measure(args.model, sample, BATCHES, ceiling_s, args.threads, [args.output])
    rates = ", ".join(f"b{b} {r:.0f}" for b, r in ceil.examples_per_s.items())
    print(f"ceiling  examples/s: {rates}")
    requests = bodies.rows(sample, REQUESTS)
    expected = ceiling.reference(args.model, requests[0], args.output, args.threads)

    rows: list[Row] = []
    overhead: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp:
        formats = args.formats.split(",")
        plan = Plan(formats, concurrencies, duration, warmup, args.threads, Path(tmp), wrk)
        for kind in args.servers.split(","):
            rows += _measure_server(plan, kind, args.model, NAME, requests, args.output, expected)
        if not args.no_overhead:
            sys.path.insert(0, str(HERE.parents[1]))  # the repository root, for tests.fixtures
            from tests.fixtures.onnx_models import identity

            ident = identity(plan.workdir, "FP32", n=4)
            x = [{"x": np.arange(4, dtype=np.float32).reshape(1, 4)}]
            plan = replace(plan, concurrencies=[1], duration_s=min(duration, 10.0))
            for kind in ("naive", "ours"):
                overhead += _measure_server(plan, kind, ident, "identity", x, "y", x[0]["x"])
    meta["loadavg_end"] = os.getloadavg()[0]
    report.render(ceil, rows, overhead, args.seq)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report.write_json(
        args.json or HERE / "results" / f"serving-{stamp}.json", meta, ceil, rows, overhead
    )
    return 0
