"""Closed-loop gRPC load with h2load (Debian's `nghttp2-client`), checked against the server.

A unary gRPC call is an HTTP/2 POST of one framed message (`bodies.encode_grpc`) with
`content-type: application/grpc` and `te: trailers`, so h2load, compiled C like wrk, loads a gRPC
server with a few percent of a core where a Python gRPC client would take the CPU the server
needs: `-c C -m 1` is a closed loop of C clients, each a connection with one stream in flight,
for `-D` seconds, all sending the same prepared `ModelInferRequest`. h2load prints no
percentiles: p50/p90/p99 come from its `--log-file` (one line per request: start, HTTP status,
microseconds to the end of the response).

h2load only sees the HTTP status, and a failed gRPC call is HTTP 200 with a `grpc-status`
trailer. So every run reads the server's own counts of successful and failed inferences before
and after (`Counts`, from a callable the caller passes): the 2xx answers beyond the successes it
counted meanwhile, or the failures it counted if more, are gRPC errors
(`LoadResult.grpc_errors`). Requests still in flight when h2load stops may finish after it and
add successes h2load never saw; they cannot hide more than C errors, and a probe checks one
answer with a real gRPC client before and after every run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bodies import GRPC_HEADERS, GRPC_PATH
from .loadgen import LoadResult, ensure_tool, measured


@dataclass(frozen=True)
class Counts:
    """A server's own counts of inference requests since it started."""

    successes: int
    failures: int


def ensure_h2load() -> str:
    """The h2load executable, installed from Debian's package when missing (needs root)."""
    return ensure_tool("h2load", "nghttp2-client")


def parse(output: str) -> dict[str, float]:
    """The counts of h2load's summary: requests done, 2xx answers, failures, and req/s."""
    values = dict.fromkeys(("done", "ok", "non_2xx", "errors", "rps"), 0.0)
    match = re.search(
        r"requests: \d+ total, \d+ started, (\d+) done, \d+ succeeded, \d+ failed,"
        r" (\d+) errored, (\d+) timeout",
        output,
    )
    if match:
        values["done"] = float(match.group(1))
        values["errors"] = float(int(match.group(2)) + int(match.group(3)))
    match = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    if match:
        values["ok"] = float(match.group(1))
        values["non_2xx"] = float(sum(int(g) for g in match.groups()[1:]))
    match = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", output)
    if match:
        values["rps"] = float(match.group(1))
    return values


def latencies(log: Path) -> list[float]:
    """Seconds from start to the end of the response of each HTTP 200 in h2load's log file."""
    seconds = []
    for line in log.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 3 and fields[1] == "200":
            seconds.append(int(fields[2]) * 1e-6)
    return seconds


def run(
    h2load: str,
    address: str,
    body: Path,
    concurrency: int,
    seconds: float,
    server_pid: int,
    counts: Callable[[], Counts],
    log: Path,
) -> LoadResult:
    """One closed-loop run of `concurrency` clients (one stream each) for `seconds`, POSTing
    the framed gRPC request in `body` to `address` (`HOST:PORT`); `counts` reads the server's
    inference counts, to find gRPC errors behind HTTP 200 answers; `log` is h2load's log file."""
    duration = max(1, round(seconds))
    cmd = [h2load, "-t1", f"-c{concurrency}", "-m1", f"-D{duration}", "-d", str(body)]
    for key, value in GRPC_HEADERS.items():
        cmd += ["-H", f"{key}: {value}"]
    cmd += ["--log-file", str(log), f"http://{address}{GRPC_PATH}"]
    log.unlink(missing_ok=True)  # h2load appends to it
    before = counts()
    m = measured(cmd, server_pid, duration + 30)
    after = counts()
    if m.returncode != 0:
        raise RuntimeError(f"h2load exited with {m.returncode}: {m.output.strip()[-500:]}")
    v = parse(m.output)
    # Every 2xx answer the server did not count as a success was a gRPC error; so was every
    # failure it counted (one of those may be a request h2load never saw finish).
    missing = int(v["ok"]) - (after.successes - before.successes)
    errors = max(0, missing, after.failures - before.failures)
    times = latencies(log)
    p50, p90, p99 = (
        (float(np.percentile(times, q)) for q in (50, 90, 99)) if times else (math.nan,) * 3
    )
    return LoadResult(
        concurrency=concurrency,
        duration_s=float(duration),
        requests=int(v["done"]),
        rps=v["rps"],
        p50=p50,
        p90=p90,
        p99=p99,
        non_2xx=int(v["non_2xx"]),
        socket_errors=int(v["errors"]),
        wrk_cpu=m.tool_cpu / duration,
        server_cpu=m.server_cpu / duration,
        other_cpu=m.other_cpu / duration,
        grpc_errors=errors,
    )
