"""Mixed sequence lengths on one eas-server (onnx processor): does padding them into shared
batches pay? (issue 16, point 3)

    python -m benchmarks.serving.mixed_lengths [--duration 10] [--rounds 1]
    python -m benchmarks.serving.mixed_lengths --help

Real sentences tokenized for all-MiniLM-L6-v2 (`minilm-l6.onnx` and `minilm-l6.inputs.npz` from
`make models`), one sentence per request, sent by wrk (closed loop, one thread, bodies cycled by
the Lua script of `loadgen.py`) at concurrency 32, asking for `sentence_embedding`:

- **a: mixed, padding auto**: each sentence at its true length (from its attention mask); the
  server's probe found padding safe, so requests of any length share a batch, padded to its
  longest;
- **b: client padded**: the same sentences, all padded by the client to one length (the longest
  sentence's, or `--pad-to`): every batch runs at that length;
- **c: mixed, --padding off**: as a, on a server that never pads: only requests of equal length
  share a batch.

Per case: req/s, p50/p99, and the mean batch size from the server's `/v2/models/{name}/stats`
(inference_count / execution_count over the run). Both servers stay up; the cases run one after
the other (rotated per round with `--rounds`), each after a warm-up and once the machine is quiet
(at most `--quiet-timeout` s of waiting). `other cores` is the most CPU that anything else on the
machine used during a case's runs: well above 0, its numbers are distorted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt

from autoai.testing import models_dir

from . import bodies, ceiling, harness, loadgen
from .report import _table
from .servers import Server, start_listening

NAME = "minilm"
OUTPUT = "sentence_embedding"
Tensors = dict[str, npt.NDArray[Any]]


@dataclass
class Case:
    """One measured configuration: a server and the bodies wrk cycles through."""

    key: str
    title: str
    server: str  # "auto" or "off": the server's --padding
    requests: list[Tensors]
    tokens: float  # mean tokens per request as sent
    runs: list[tuple[loadgen.LoadResult, float]] = field(default_factory=list)  # (run, batch)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.serving.mixed_lengths", description=__doc__
    )
    p.add_argument("--model", type=Path, default=models_dir() / "minilm-l6.onnx")
    p.add_argument("--inputs", type=Path, default=None, help="default: <model stem>.inputs.npz")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each run")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rounds", type=int, default=1, help="runs per case (median reported)")
    p.add_argument("--pad-to", type=int, default=None, help="case b's length (default: longest)")
    p.add_argument(
        "--lengths",
        default=None,
        metavar="MIN-MAX",
        help="only the sentences of MIN to MAX tokens (default: all of them)",
    )
    p.add_argument("--format", choices=bodies.FORMATS, default="binary", help="request bodies")
    p.add_argument(
        "--quiet-timeout",
        type=float,
        default=60.0,
        help="longest wait for a quiet machine before each run (then it goes on, and the "
        "'other cores' column shows what ran beside it)",
    )
    return p.parse_args(argv)


def sentences(path: Path) -> tuple[Tensors, npt.NDArray[np.int64]]:
    """The stored right-padded rows (input_ids, attention_mask) and each one's true length."""
    with np.load(path) as npz:
        rows = {k: npz[k] for k in ("input_ids", "attention_mask")}
    mask = rows["attention_mask"]
    lengths = mask.sum(axis=1).astype(np.int64)
    positions = np.arange(mask.shape[1])
    if not np.array_equal(mask, (positions < lengths[:, None]).astype(mask.dtype)):
        raise SystemExit(f"{path}: the rows are not right-padded (mask ones, then zeros)")
    return rows, lengths


def cut(rows: Tensors, index: int, length: int) -> Tensors:
    """Row `index` as a one-example request of `length` tokens (its own, or padded to more)."""
    return {k: np.ascontiguousarray(v[index : index + 1, :length]) for k, v in rows.items()}


def stats(server: Server) -> tuple[int, int]:
    """(inference_count, execution_count) of the server's model so far."""
    with urllib.request.urlopen(f"{server.url}/v2/models/{NAME}/stats", timeout=10) as r:
        (model,) = json.load(r)["model_stats"]
    return int(model["inference_count"]), int(model["execution_count"])


def padding_decision(server: Server) -> str:
    """What the server decided about padding, from its /config ``parameters``."""
    with urllib.request.urlopen(f"{server.url}/v2/models/{NAME}/config", timeout=10) as r:
        parameters = json.load(r).get("parameters", {})
    value = parameters.get("padding", {}).get("string_value")
    return str(value) if value is not None else "(not reported)"


def start(model: Path, padding: str, workdir: Path) -> Server:
    cmd = [*harness.eas_server_command(), "--model", str(model), "--name", NAME]
    cmd += ["--host", "127.0.0.1", "--port", "0", "--padding", padding]
    cmd += ["--max-batch-size", str(harness.MAX_BATCH_SIZE)]
    cmd += ["--max-batch-timeout-ms", str(harness.MAX_BATCH_TIMEOUT_MS)]
    return start_listening(f"eas-{padding}", cmd, workdir / f"eas-padding-{padding}.log")


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return "unknown CPU"


def _on_sigterm(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds through the ExitStack that stops the servers


def _measure(
    case: Case,
    server: Server,
    script: Path,
    args: argparse.Namespace,
    wrk: str,
    fleet: list[Server],
) -> None:
    url = f"{server.url}/v2/models/{NAME}/infer"
    if args.warmup > 0:
        loadgen.run(wrk, url, script, args.concurrency, args.warmup, server.pid)
        harness.wait_quiet(fleet, timeout_s=args.quiet_timeout)
    before = stats(server)
    result = loadgen.run(wrk, url, script, args.concurrency, args.duration, server.pid)
    after = stats(server)
    harness.wait_quiet(fleet, timeout_s=args.quiet_timeout)
    batches = after[1] - before[1]
    batch = (after[0] - before[0]) / batches if batches else float("nan")
    case.runs.append((result, batch))
    failed = result.non_2xx + result.socket_errors
    print(
        f"{case.key}  {result.rps:7.1f} req/s  p50 {result.p50 * 1e3:7.1f} ms"
        f"  p99 {result.p99 * 1e3:7.1f} ms  batch {batch:5.1f}"
        f"  cores: server {result.server_cpu:.2f} wrk {result.wrk_cpu:.2f}"
        f" other {result.other_cpu:.2f}" + (f"  FAILED {failed}" if failed else "")
    )


def _row(case: Case) -> list[str]:
    def med(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    results = [r for r, _ in case.runs]
    failed = sum(r.non_2xx + r.socket_errors for r in results)
    return [
        case.key,
        case.title,
        f"{case.tokens:.1f}",
        f"{med([r.rps for r in results]):.1f}",
        f"{med([r.p50 for r in results]) * 1e3:.1f}",
        f"{med([r.p99 for r in results]) * 1e3:.1f}",
        f"{med([b for _, b in case.runs]):.1f}",
        f"{med([r.server_cpu for r in results]):.2f}",
        f"{max((r.other_cpu for r in results), default=float('nan')):.2f}",
        str(failed),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    if not args.model.exists():
        print(f"{args.model} is missing: run `make models` first", file=sys.stderr)
        return 2
    rows, lengths = sentences(args.inputs or args.model.with_name(args.model.stem + ".inputs.npz"))
    if args.lengths:
        low, high = (int(v) for v in args.lengths.split("-", 1))
        keep = (lengths >= low) & (lengths <= high)
        if not keep.any():
            raise SystemExit(f"no sentence of {low} to {high} tokens")
        rows, lengths = {k: v[keep] for k, v in rows.items()}, lengths[keep]
    pad_to = args.pad_to or int(lengths.max())
    if pad_to < lengths.max() or pad_to > rows["input_ids"].shape[1]:
        raise SystemExit(
            f"--pad-to must be between {lengths.max()} and {rows['input_ids'].shape[1]}"
        )
    n = len(lengths)
    mixed = [cut(rows, i, int(lengths[i])) for i in range(n)]
    padded = [cut(rows, i, pad_to) for i in range(n)]
    cases = [
        Case("a", "mixed lengths, padding auto (probe)", "auto", mixed, float(lengths.mean())),
        Case("b", f"padded by the client to {pad_to}", "auto", padded, float(pad_to)),
        Case("c", "mixed lengths, --padding off", "off", mixed, float(lengths.mean())),
    ]
    cpu = cpu_name()
    print(f"{cpu}, {os.cpu_count()} cores; wrk -t1 -c{args.concurrency}, {args.duration:g} s runs")
    print(
        f"{args.model.name}: {n} sentences of {lengths.min()}-{lengths.max()} tokens "
        f"(mean {lengths.mean():.1f}, {len(set(lengths.tolist()))} distinct lengths); "
        f"max batch {harness.MAX_BATCH_SIZE}, timeout {harness.MAX_BATCH_TIMEOUT_MS} ms"
    )
    wrk = loadgen.ensure_wrk()
    expected = ceiling.reference(args.model, mixed[0], OUTPUT, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="mixed-lengths-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        servers: dict[str, Server] = {}
        for padding in ("auto", "off"):
            servers[padding] = server = start(args.model, padding, workdir)
            stack.callback(server.stop)
            print(f"server --padding {padding}: padding {padding_decision(server)}")
        scripts: dict[str, Path] = {}
        for case in cases:
            encoded = [bodies.encode(r, [OUTPUT], args.format) for r in case.requests]
            paths = bodies.write(encoded, workdir / case.key, case.key)
            scripts[case.key] = loadgen.write_lua(paths, encoded, workdir / f"{case.key}.lua")
            harness.probe(servers[case.server], NAME, encoded[0], OUTPUT, expected)
        fleet = list(servers.values())
        harness.wait_quiet(fleet, timeout_s=args.quiet_timeout)
        for round_ in range(args.rounds):
            for case in cases[round_ % len(cases) :] + cases[: round_ % len(cases)]:
                _measure(case, servers[case.server], scripts[case.key], args, wrk, fleet)
    headers = ["case", "requests", "tokens", "req/s", "p50 ms", "p99 ms", "mean batch"]
    headers += ["server cores", "other cores", "failed"]
    rounds = f", median of {args.rounds} rounds" if args.rounds > 1 else ""
    title = (
        f"Mixed lengths, all-MiniLM-L6-v2, concurrency {args.concurrency}, {args.format} bodies, "
        f"{args.duration:g} s per run{rounds} ({cpu}, {os.cpu_count()} cores)"
    )
    _table(title, headers, [_row(c) for c in cases])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
