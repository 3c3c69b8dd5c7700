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
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from serving import bodies, ceiling, harness, loadgen, report, rounds

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
    p.add_argument("--duration", type=float, default=15.0, help="seconds per wrk run")
    p.add_argument("--servers", default=",".join(harness.SERVERS), help="comma-separated")
    p.add_argument("--formats", default=",".join(bodies.FORMATS), help="json,binary")
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
    p.add_argument("--quick", action="store_true", help="3 s runs, 1 s warm-ups, 1 round")
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


def _meta(args: argparse.Namespace, duration: float, n_rounds: int) -> dict[str, Any]:
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
        "rounds": n_rounds,
        "intra_op_threads": args.threads,
        "batching": {
            "max_batch_size": harness.MAX_BATCH_SIZE,
            "timeout_ms": harness.MAX_BATCH_TIMEOUT_MS,
        },
    }


def _overhead_group(plan: rounds.Plan, duration: float) -> rounds.Group:
    """naive and ours on an identity model (FP32 [1, 4]) at concurrency 1: the HTTP path alone."""
    sys.path.insert(0, str(HERE.parents[1]))  # the repository root, for tests.fixtures
    from tests.fixtures.onnx_models import identity

    model = identity(plan.workdir, "FP32", n=4)
    x = [{"x": np.arange(4, dtype=np.float32).reshape(1, 4)}]
    return rounds.Group(
        ["naive", "ours"], model, "identity", x, "y", x[0]["x"], [1], min(duration, 10.0)
    )


def _on_sigterm(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the servers


def main(argv: list[str] | None = None) -> int:
    began = time.monotonic()
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
    n_rounds = args.rounds if args.rounds is not None else 1 if args.quick else 3
    if n_rounds < 1 or args.retries < 0:
        raise SystemExit("--rounds must be at least 1 and --retries at least 0")
    meta = _meta(args, duration, n_rounds)
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

    requests = bodies.rows(sample, REQUESTS)
    expected = ceiling.reference(args.model, requests[0], args.output, args.threads)
    bench = ceiling.InProcess(args.model, sample, args.threads, [args.output])

    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp, ExitStack() as stack:
        plan = rounds.Plan(
            args.formats.split(","), n_rounds, warmup, args.threads, Path(tmp), wrk, args.retries
        )
        main_group = rounds.Group(
            args.servers.split(","),
            args.model,
            NAME,
            requests,
            args.output,
            expected,
            concurrencies,
            duration,
        )
        groups = [main_group] if args.no_overhead else [main_group, _overhead_group(plan, duration)]
        fleet = rounds.Fleet()
        started = [rounds.start(plan, group, fleet, stack) for group in groups]
        for group, (_, cells) in zip(groups, started, strict=True):
            rounds.warm_up(plan, fleet, cells, max(group.concurrencies))
        sweep, sweep_reruns = rounds.ceiling(plan, fleet, bench, BATCHES, ceiling_s)
        rates = ", ".join(f"b{b} {r:.0f}" for b, r in sweep.examples_per_s.items())
        print(f"ceiling  examples/s: {rates}  (other cores {sweep.other_cpu:.2f})")
        step = rounds.CeilingStep(bench, sorted({sweep.best_batch, 1}, reverse=True), ceiling_s)
        step.reruns = sweep_reruns
        blocks = [(group, cells) for group, (_, cells) in zip(groups, started, strict=True)]
        rounds.run(plan, fleet, blocks, step)
    rows = started[0][0]
    overhead = started[1][0] if len(started) > 1 else []
    meta["loadavg_end"] = os.getloadavg()[0]
    meta["wall_s"] = round(time.monotonic() - began, 1)
    report.render(sweep, step.results, rows, overhead, args.seq, step.reruns)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = args.json or HERE / "results" / f"serving-{stamp}.json"
    report.write_json(path, meta, sweep, step.results, rows, overhead, step.reruns)
    print(f"wall time {meta['wall_s'] / 60:.1f} min")
    return 0
