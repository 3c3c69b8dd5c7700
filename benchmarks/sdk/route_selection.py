"""Cost of the SDK's per-call routing: ``RouteSelector.pick``, ``shadow_due`` and ``check_inputs``.

Run: ``.venv/bin/python -m benchmarks.sdk.route_selection [--calls 100000] [--repeats 7]``.

Each row times ``--calls`` calls in a plain ``for`` loop over precomputed keys (one distinct key per
call for sticky picks), ``--repeats`` times, and prints the median and the best per call; the
loop's own cost is in the numbers and shown on its own row. Rows: weighted picks (no key) and
sticky picks (``sticky_key`` set, a key per call) with 2 and 10 routes; a key passed to a table
without ``sticky_key`` (ignored); ``shadow_due``; ``check_inputs`` on a 2-input signature; and
the once-per-revision cost of building a selector. Target: at most 5 µs per selection.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from autoai.sdk._routes import Route, RouteTable, Shadow, Signature, TensorSpec
from autoai.sdk._selector import RouteSelector
from autoai.sdk._signature import check_inputs
from autoai.testing import cpu_model

TARGET_NS = 5_000


def _table(routes: int, *, sticky: bool) -> RouteTable:
    weights = [90, 10] if routes == 2 else [10 * (i + 1) for i in range(routes)]
    return RouteTable(
        schema_version=1,
        model="bench",
        revision=1,
        routes=tuple(
            Route(version=str(i), weight=w, service=f"svc-{i}", processor="onnx")
            for i, w in enumerate(weights)
        ),
        sticky_key="user_id" if sticky else None,
        shadow=Shadow(version="shadow", ratio=0.05, service="svc-shadow", processor="onnx"),
    )


def _each(fn: Callable[[Any], object] | None, values: list[Any]) -> Callable[[], None]:
    """A body that calls ``fn(value)`` once per value (``None``: the bare loop)."""
    if fn is None:

        def bare() -> None:
            for _ in values:
                pass

        return bare

    def body() -> None:
        for value in values:
            fn(value)

    return body


def _times(fn: Callable[[], object], calls: int) -> Callable[[], None]:
    """A body that calls ``fn()`` ``calls`` times."""

    def body() -> None:
        for _ in range(calls):
            fn()

    return body


def _time(body: Callable[[], None], calls: int, repeats: int) -> tuple[float, float]:
    """(median, best) nanoseconds per call of ``body``, which makes ``calls`` calls."""
    body()  # warm up
    per_call = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        body()
        per_call.append((time.perf_counter_ns() - start) / calls)
    return statistics.median(per_call), min(per_call)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--calls", type=int, default=100_000, help="calls per timed run")
    p.add_argument("--repeats", type=int, default=7, help="timed runs per row")
    args = p.parse_args()
    calls: int = args.calls
    repeats: int = args.repeats

    keys = [f"user-{i:08d}" for i in range(calls)]
    rows: list[tuple[str, float, float]] = []

    rows.append(("loop overhead (for k in keys: pass)", *_time(_each(None, keys), calls, repeats)))
    for routes in (2, 10):
        for sticky in (False, True):
            pick = RouteSelector(_table(routes, sticky=sticky)).pick
            kind = "sticky pick(key)" if sticky else "weighted pick()"
            body = _each(pick, keys) if sticky else _times(pick, calls)
            rows.append((f"{kind}, {routes} routes", *_time(body, calls, repeats)))
    ignored = RouteSelector(_table(10, sticky=False)).pick
    label = "pick(key) without sticky_key, 10 routes"
    rows.append((label, *_time(_each(ignored, keys), calls, repeats)))
    due = RouteSelector(_table(2, sticky=False)).shadow_due
    rows.append(("shadow_due()", *_time(_times(due, calls), calls, repeats)))

    signature = Signature(
        inputs=(
            TensorSpec(name="input_ids", datatype="INT64", shape=(-1, -1)),
            TensorSpec(name="attention_mask", datatype="INT64", shape=(-1, 128)),
        )
    )
    inputs = {
        "input_ids": np.zeros((8, 128), dtype=np.int64),
        "attention_mask": np.ones((8, 128), dtype=np.int64),
    }

    body = _times(lambda: check_inputs(signature, inputs), calls)
    rows.append(("check_inputs, 2 inputs (incl. a lambda call)", *_time(body, calls, repeats)))

    builds: list[tuple[str, float, float]] = []
    for routes in (2, 10):
        for sticky in (False, True):
            table = _table(routes, sticky=sticky)

            label = f"build RouteSelector, {routes} routes, {'sticky' if sticky else 'weighted'}"
            builds.append((label, *_time(_each(RouteSelector, [table]), 1, max(3, repeats // 2))))

    cpu = cpu_model()
    print(
        f"\nroute selection on {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"
        f" ({calls:,} calls x {repeats} runs; target <= {TARGET_NS / 1000:g} µs per selection)"
    )
    head = f"{'operation':<44} {'median':>10} {'best':>10}"
    print(head)
    print("-" * len(head))
    for label, median, best in rows:
        print(f"{label:<44} {median:>7.0f} ns {best:>7.0f} ns")
    for label, median, best in builds:
        print(f"{label:<44} {median / 1000:>7.0f} µs {best / 1000:>7.0f} µs")
    over = [label for label, median, _ in rows if "pick" in label and median > TARGET_NS]
    print("\nall picks within target" if not over else f"\nover target: {', '.join(over)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
