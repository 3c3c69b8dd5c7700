"""The schedule of a run: every server started once, then rounds of interleaved measurements.

This 2-core machine's speed drifts by up to +-12 % over minutes, so servers measured one after
the other, minutes apart, are not compared fairly. Here all servers stay up for the whole run
(an idle one costs nothing; only one is loaded at a time) and each round runs, for each model
and concurrency, every (server, body format) cell once, in an order that rotates from round to
round; each model's in-process ceiling is measured again once per round between the cells of its
highest concurrency. After every load run the loaded server answers one more request (which
queues behind whatever the load generator left in it) and all servers must be idle before
anything else runs.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy.typing as npt

from . import bodies, grpc_load, harness, loadgen
from .ceiling import Ceiling, InProcess
from .harness import Skip
from .loadgen import LoadResult
from .results import BUSY_LIMIT, Row
from .servers import Server

T = TypeVar("T")


@dataclass(frozen=True)
class Plan:
    """How every cell is measured in this run."""

    formats: list[str]
    rounds: int
    warmup_s: float
    threads: int
    workdir: Path
    wrk: str
    h2load: str  # "" when no gRPC format is measured
    retries: int  # re-runs of a run that shared the machine with other work
    quiet_timeout_s: float = 300.0  # longest wait for a quiet machine between runs


@dataclass(frozen=True)
class Group:
    """One model served by several kinds of server, each loaded with every body format."""

    kinds: list[str]
    model: Path
    name: str
    requests: list[dict[str, npt.NDArray[Any]]]
    output: str
    expected: npt.NDArray[Any]
    concurrencies: list[int]
    duration_s: float


@dataclass
class Cell:
    """A (server, body format) that passed its probe: how to load it and check it."""

    row: Row
    server: Server
    load: Callable[[int, float], LoadResult]  # (concurrency, seconds): one measured run
    check: Callable[[], None]  # one request, checked; raises Skip


@dataclass
class CeilingStep:
    """The in-process ceiling at a few batch sizes, once per round."""

    bench: InProcess
    batches: list[int]
    seconds: float
    results: list[Ceiling] = field(default_factory=list)  # index: round
    reruns: int = 0


@dataclass
class Block:
    """One group's cells in a round, and the ceiling that joins its top concurrency (if any)."""

    group: Group
    cells: list[Cell]
    step: CeilingStep | None = None


@dataclass
class Fleet:
    """Every started server, for the idle check."""

    servers: list[Server] = field(default_factory=list)
    quiet_timeout_s: float = 300.0

    def settle(self, cell: Cell | None = None) -> None:
        """`cell`'s server answers one more request, then wait until no server is busy."""
        if cell is not None and not cell.row.note:
            try:
                cell.check()
            except Skip as exc:
                cell.row.note = f"after a run: {exc}"
                print(f"skip     {cell.row.server} / {cell.row.fmt}: {cell.row.note}")
        harness.wait_quiet(self.servers, timeout_s=self.quiet_timeout_s)


def rotated(items: Sequence[T], round_: int, rounds: int) -> list[T]:
    """`items` rotated by an even share of its length per round: each starts somewhere else."""
    if not items:
        return []
    shift = (round_ * len(items) // max(1, rounds)) % len(items)
    return [*items[shift:], *items[:shift]]


def _http_cell(plan: Plan, group: Group, server: Server, row: Row) -> Cell:
    prepared = [bodies.encode(r, [group.output], row.fmt) for r in group.requests]
    stem = f"{group.name}-{row.server}-{row.fmt}"
    paths = bodies.write(prepared, plan.workdir / "bodies", stem)
    script = loadgen.write_lua(paths, prepared, plan.workdir / f"{stem}.lua")
    url = f"{server.url}/v2/models/{group.name}/infer"

    def load(c: int, seconds: float) -> LoadResult:
        return loadgen.run(plan.wrk, url, script, c, seconds, server.pid)

    check = functools.partial(
        harness.probe, server, group.name, prepared[0], group.output, group.expected
    )
    return Cell(row, server, load, check)


def _grpc_cell(plan: Plan, group: Group, server: Server, row: Row) -> Cell:
    """h2load sends one body, the first request's: at a fixed sequence length every example
    costs the same."""
    if not server.grpc:
        raise Skip(f"{server.name} serves no gRPC here")
    first = group.requests[0]
    stem = f"{group.name}-{row.server}-{row.fmt}"
    (path,) = bodies.write(
        [bodies.encode_grpc(group.name, first, [group.output])], plan.workdir / "bodies", stem
    )
    counts = functools.partial(harness.inference_counts, server, group.name)
    counts()  # raises Skip: without the server's counts, gRPC errors would go unseen
    log = plan.workdir / f"{stem}.h2load.log"

    def load(c: int, seconds: float) -> LoadResult:
        return grpc_load.run(plan.h2load, server.grpc, path, c, seconds, server.pid, counts, log)

    check = functools.partial(
        harness.probe_grpc, server, group.name, first, group.output, group.expected
    )
    return Cell(row, server, load, check)


def start(
    plan: Plan, group: Group, fleet: Fleet, stack: contextlib.ExitStack
) -> tuple[list[Row], list[Cell]]:
    """Start `group`'s servers (stopped by `stack`), probe each body format, warm each cell up."""
    rows: list[Row] = []
    cells: list[Cell] = []
    for kind in group.kinds:
        formats = [f for f in plan.formats if f != "grpc" or kind in harness.GRPC_SERVERS]
        kind_rows = [Row(kind, fmt) for fmt in formats]
        rows += kind_rows
        try:
            server = harness.start(
                kind, group.model, group.name, plan.workdir, plan.threads, "grpc" in formats
            )
        except Skip as exc:
            for row in kind_rows:
                row.note = str(exc).splitlines()[0]
            print(f"skip     {group.name}: {kind}: {exc}")
            continue
        stack.callback(server.stop)
        fleet.servers.append(server)
        grpc = f" (gRPC {server.grpc})" if server.grpc and "grpc" in formats else ""
        print(f"started  {kind} (pid {server.pid}) at {server.url}{grpc} for {group.name}")
        for row in kind_rows:
            try:
                make = _grpc_cell if row.fmt == "grpc" else _http_cell
                cell = make(plan, group, server, row)
                cell.check()
            except Skip as exc:
                row.note = str(exc)
                print(f"skip     {group.name}: {kind} / {row.fmt}: {exc}")
                continue
            cells.append(cell)
    return rows, cells


def warm_up(plan: Plan, fleet: Fleet, cells: Sequence[Cell], concurrency: int) -> None:
    """Load each cell for `plan.warmup_s` at `concurrency` (first runs allocate and plan)."""
    if plan.warmup_s <= 0:
        return
    for cell in cells:
        cell.load(concurrency, plan.warmup_s)
        fleet.settle(cell)


def _load(plan: Plan, fleet: Fleet, cell: Cell, c: int, group: Group, round_: int) -> None:
    """One measured run of `cell` at concurrency `c`, recorded as round `round_`."""
    row, duration_s, group_name = cell.row, group.duration_s, group.name
    if row.note:  # failed earlier in this run
        return
    if cell.server.proc.poll() is not None:
        row.note = f"server exited with {cell.server.proc.returncode} during the run"
        print(f"skip     {row.server} / {row.fmt}: {row.note}")
        return
    for attempt in range(plan.retries + 1):
        try:
            cell.check()  # settle: the probe, and the answer checked again
        except Skip as exc:
            row.note = f"before a run: {exc}"
            print(f"skip     {row.server} / {row.fmt}: {row.note}")
            return
        result = cell.load(c, duration_s)
        fleet.settle(cell)
        if result.other_cpu <= BUSY_LIMIT or attempt == plan.retries:
            break
        row.reruns += 1
        print(
            f"r{round_ + 1} {group_name:10} {row.server:8} {row.fmt:6} c={c:<3}"
            f" {result.rps:8.0f} req/s, but"
            f" {result.other_cpu:.2f} cores busy elsewhere: again"
        )
    row.record(round_, result)
    failed = result.failures
    tool = "h2load" if row.fmt == "grpc" else "wrk"
    print(
        f"r{round_ + 1} {group_name:10} {row.server:8} {row.fmt:6} c={c:<3} {result.rps:8.0f} req/s"
        f"  p50 {result.p50 * 1e3:7.2f} ms  p99 {result.p99 * 1e3:7.2f} ms"
        f"  cores: {tool} {result.wrk_cpu:.2f} server {result.server_cpu:.2f}"
        f" other {result.other_cpu:.2f}" + (f"  FAILED {failed}" if failed else "")
    )


def ceiling(
    plan: Plan, fleet: Fleet, bench: InProcess, batches: Sequence[int], seconds: float
) -> tuple[Ceiling, int]:
    """The in-process ceiling with every server idle, measured again (up to `plan.retries`
    times) when other work shared the machine; returns it and the number of re-runs."""
    for attempt in range(plan.retries + 1):
        fleet.settle()  # no server may be busy while this process measures
        ceil = bench.measure(batches, seconds)
        if ceil.other_cpu <= BUSY_LIMIT or attempt == plan.retries:
            return ceil, attempt
        print(f"ceiling: {ceil.other_cpu:.2f} cores busy elsewhere: again")
    raise AssertionError("unreachable")


def _ceiling(plan: Plan, fleet: Fleet, step: CeilingStep, round_: int, name: str) -> None:
    ceil, reruns = ceiling(plan, fleet, step.bench, step.batches, step.seconds)
    step.results.append(ceil)
    step.reruns += reruns
    rates = ", ".join(f"b{b} {r:.0f}" for b, r in ceil.examples_per_s.items())
    print(
        f"r{round_ + 1} {name:10} ceiling  examples/s: {rates}  (other cores {ceil.other_cpu:.2f})"
    )


def run(plan: Plan, fleet: Fleet, blocks: Sequence[Block]) -> None:
    """`plan.rounds` rounds; in each, every block's concurrencies in order, each with its cells
    in rotated order; a block's ceiling joins the rotation at its top concurrency."""
    for r in range(plan.rounds):
        print(f"round {r + 1} of {plan.rounds}")
        for block in blocks:
            group = block.group
            for c in group.concurrencies:
                items: list[Cell | CeilingStep] = list(block.cells)
                if block.step is not None and c == max(group.concurrencies):
                    items.append(block.step)
                for item in rotated(items, r, plan.rounds):
                    if isinstance(item, CeilingStep):
                        _ceiling(plan, fleet, item, r, group.name)
                    else:
                        _load(plan, fleet, item, c, group, r)
