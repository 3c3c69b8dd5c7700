"""`python -m benchmarks.serving.run`: the whole benchmark in one run, tables and JSON last."""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import onnxruntime as ort

from autoai.testing import cpu_model, machine_busy_seconds, models_dir

from . import bodies, ceiling, grpc_load, harness, loadgen, models, report, rounds
from .results import ModelResult

HERE = Path(__file__).resolve().parent
REQUESTS = 64  # distinct prepared bodies (real sentences) that wrk cycles through
BATCHES = (1, 2, 4, 8, 16, 32, 64)
OVERHEAD_S = 5.0  # longest run on the identity model: thousands of requests at concurrency 1
RUN_COST_S = 1.5  # what a run adds to its duration: probes, start, the wait for a quiet machine


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving.run", description=__doc__)
    p.add_argument("--models", default="fast,slow", help="comma-separated: fast, slow")
    p.add_argument("--model", type=Path, default=None, help="one other model instead of --models")
    p.add_argument("--inputs", type=Path, default=None, help="--model's rows (<stem>.inputs.npz)")
    p.add_argument("--seq", type=int, default=32, help="--model's sequence length")
    p.add_argument("--output", default="sentence_embedding", help="the output requested")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per load run")
    p.add_argument("--servers", default=",".join(harness.SERVERS), help="comma-separated")
    p.add_argument("--formats", default=",".join(harness.FORMATS), help="json,binary,grpc")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ORT intra-op")
    p.add_argument("--no-overhead", action="store_true", help="skip the identity-model run")
    p.add_argument("--json", type=Path, default=None, help="default: results/serving-<time>.json")
    p.add_argument("--rounds", type=int, default=None, help="default 3 (--quick: 1)")
    p.add_argument(
        "--retries",
        type=int,
        default=2,
        help="re-runs of a run that had other work beside it (> 0.2 cores busy elsewhere)",
    )
    p.add_argument(
        "--quiet-timeout",
        type=float,
        default=None,
        help="longest wait for a quiet machine before each run, s (default 300; --quick: 30)",
    )
    p.add_argument("--quick", action="store_true", help="2 s runs, 1 s warm-ups, 1 round")
    return p.parse_args(argv)


def _specs(args: argparse.Namespace) -> list[models.ModelSpec]:
    if args.model is not None:
        return [models.custom(args.model, args.inputs, args.seq)]
    known = models.builtin(models_dir())
    keys = [k for k in args.models.split(",") if k]
    unknown = [k for k in keys if k not in known]
    if unknown or not keys:
        raise SystemExit(f"--models: expected some of {', '.join(known)}, got {args.models!r}")
    return [known[k] for k in keys]


def _version(cmd: list[str]) -> str:
    if not cmd[0]:
        return ""
    done = subprocess.run(cmd, capture_output=True, text=True)
    return (done.stdout or done.stderr).split("\n")[0].strip()


def _meta(
    args: argparse.Namespace,
    specs: list[models.ModelSpec],
    tools: tuple[str, str],
    duration: float,
    n_rounds: int,
) -> dict[str, Any]:
    cpu = cpu_model()
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "wrk": _version([tools[0], "-v"]),
        "h2load": _version([tools[1], "--version"]),
        "models": [{"key": m.key, "path": str(m.path), "seq": m.seq} for m in specs],
        "formats": args.formats.split(","),
        "concurrency": args.concurrency,
        "duration_s": duration,
        "rounds": n_rounds,
        "intra_op_threads": args.threads,
        "ours": "eas-server defaults (no tuning flags)",
        "mlserver_batching": {
            "max_batch_size": harness.MAX_BATCH_SIZE,
            "timeout_ms": harness.MAX_BATCH_TIMEOUT_MS,
        },
    }


def _overhead_group(plan: rounds.Plan, duration: float) -> rounds.Group:
    """naive and ours on an identity model (FP32 [1, 4]) at concurrency 1: the request path
    alone, HTTP and gRPC."""
    from autoai.testing.models import identity

    model = identity(plan.workdir, "FP32", n=4)
    x = [{"x": np.arange(4, dtype=np.float32).reshape(1, 4)}]
    return rounds.Group(
        ["naive", "ours"], model, "identity", x, "y", x[0]["x"], [1], min(duration, OVERHEAD_S)
    )


def _estimate_s(plan: rounds.Plan, blocks: list[rounds.Block]) -> float:
    """Seconds the rounds should take on a quiet machine."""
    per_round = 0.0
    for block in blocks:
        runs = len(block.cells) * len(block.group.concurrencies)
        per_round += runs * (block.group.duration_s + RUN_COST_S)
        if block.step is not None:
            per_round += len(block.step.batches) * (block.step.seconds + 1.0)
    return plan.rounds * per_round


def _on_sigterm(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the servers


def main(argv: list[str] | None = None) -> int:
    began = time.monotonic()
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    specs = _specs(args)
    for spec in specs:
        for path in (spec.path, spec.inputs):
            if not path.exists():
                print(f"{path} is missing: run `{spec.build}` first", file=sys.stderr)
                return 2
    formats = [f for f in args.formats.split(",") if f]
    if not formats or any(f not in harness.FORMATS for f in formats):
        raise SystemExit(f"--formats: expected some of {', '.join(harness.FORMATS)}")
    concurrencies = sorted(int(c) for c in args.concurrency.split(","))
    duration, warmup, ceiling_s = (2.0, 1.0, 1.0) if args.quick else (args.duration, 2.0, 3.0)
    quiet_timeout = args.quiet_timeout
    if quiet_timeout is None:
        quiet_timeout = 30.0 if args.quick else 300.0
    wrk = loadgen.ensure_wrk()
    h2load = grpc_load.ensure_h2load() if "grpc" in formats else ""
    n_rounds = args.rounds if args.rounds is not None else 1 if args.quick else 3
    if n_rounds < 1 or args.retries < 0:
        raise SystemExit("--rounds must be at least 1 and --retries at least 0")
    meta = _meta(args, specs, (wrk, h2load), duration, n_rounds)
    tools = ", ".join(t for t in (meta["wrk"], meta["h2load"]) if t)
    print(f"{meta['cpu']}, {meta['cores']} cores; onnxruntime {meta['onnxruntime']}; {tools}")
    meta["loadavg_start"] = os.getloadavg()[0]
    busy = machine_busy_seconds()
    time.sleep(1.0)
    meta["busy_cores_before"] = busy = machine_busy_seconds() - busy
    if busy > 0.2:
        print(
            f"warning: {busy:.2f} cores busy before the run: other work on this machine distorts"
            " every number (see the 'rest of the machine' CPU column)"
        )

    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp, ExitStack() as stack:
        plan = rounds.Plan(
            formats, n_rounds, warmup, args.threads, Path(tmp), wrk, h2load, args.retries
        )
        groups, benches = [], []
        for spec in specs:
            sample = models.load_sample(spec.inputs, spec.seq)
            requests = bodies.rows(sample, REQUESTS)
            expected = ceiling.reference(spec.path, requests[0], args.output, args.threads)
            print(f"model    {spec.key}: {spec.path} (seq {spec.seq}); inputs {spec.inputs}")
            groups.append(
                rounds.Group(
                    args.servers.split(","),
                    spec.path,
                    spec.name,
                    requests,
                    args.output,
                    expected,
                    concurrencies,
                    duration,
                )
            )
            benches.append(ceiling.InProcess(spec.path, sample, args.threads, [args.output]))
        if not args.no_overhead:
            groups.append(_overhead_group(plan, duration))
        fleet = rounds.Fleet(quiet_timeout_s=quiet_timeout)
        started = [rounds.start(plan, group, fleet, stack) for group in groups]
        for group, (_, cells) in zip(groups, started, strict=True):
            rounds.warm_up(plan, fleet, cells, max(group.concurrencies))
        blocks = [rounds.Block(g, cells) for g, (_, cells) in zip(groups, started, strict=True)]
        sweeps = []
        for block, bench in zip(blocks, benches, strict=False):  # the identity block has none
            sweep, reruns = rounds.ceiling(plan, fleet, bench, BATCHES, ceiling_s)
            rates = ", ".join(f"b{b} {r:.0f}" for b, r in sweep.examples_per_s.items())
            print(f"ceiling  {block.group.name}: examples/s {rates}  (other {sweep.other_cpu:.2f})")
            block.step = rounds.CeilingStep(
                bench, sorted({sweep.best_batch, 1}, reverse=True), ceiling_s
            )
            block.step.reruns = reruns
            sweeps.append(sweep)
        print(f"rounds   {n_rounds}, about {_estimate_s(plan, blocks) / 60:.0f} min")
        rounds.run(plan, fleet, blocks)
    results = [
        ModelResult(
            spec.key, spec.name, spec.seq, sweep, block.step.results, rows, block.step.reruns
        )
        for spec, sweep, block, (rows, _) in zip(specs, sweeps, blocks, started, strict=False)
        if block.step is not None
    ]
    overhead = [] if args.no_overhead else started[-1][0]
    meta["loadavg_end"] = os.getloadavg()[0]
    meta["wall_s"] = round(time.monotonic() - began, 1)
    report.render(results, overhead)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = args.json or HERE / "results" / f"serving-{stamp}.json"
    report.write_json(path, meta, results, overhead)
    print(f"wall time {meta['wall_s'] / 60:.1f} min")
    return 0
