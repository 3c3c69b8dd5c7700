"""A step's window as each generator process saw it, and the exact merge of those parts (pure).

With ``--processes N`` every generator process keeps its own ``Samples``. At the end of a step
each reduces them to a ``WindowPart`` over the window the parent chose (the parent's scrapes,
on the host's monotonic clock, which every process shares): the successful calls that finished
in it, the latencies of the calls the window counts, the errors by kind, and the totals of the
whole step. ``merge_parts`` joins the parts into the step's ``ClientStats``: counts and errors
are summed, QPS is the total over the window, and the latencies are concatenated, so the merged
percentiles are those of the union of every process's calls (never an average of per-process
percentiles). ``summarize`` of one process's samples is the merge of its single part, so one
process and many are computed by the same code.

Which calls a window counts (see ``_stats``): throughput counts the successful calls that
finished in it; latency and errors count the calls that finished in it (closed loop), or the
calls intended in it wherever they finished (open loop).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ._stats import ClientStats, LatencySummary, Samples

__all__ = ["WindowPart", "merge_parts", "summarize", "window_part"]


@dataclass(frozen=True, slots=True)
class WindowPart:
    """One generator process's share of a step's window.

    Attributes:
        requests: successful calls that finished in the window.
        latencies: seconds, of the successful calls the window counts (any order).
        errors: failed calls the window counts, by kind.
        total_ok, total_failed: every call of the step, its warmup and drain included.
    """

    requests: int
    latencies: npt.NDArray[np.float64] = field(repr=False)
    errors: dict[str, int]
    total_ok: int = 0
    total_failed: int = 0


def _check(start: float, end: float) -> None:
    if not end > start:
        raise ValueError(f"empty window [{start}, {end}]")


def window_part(samples: Samples, start: float, end: float, *, by_intended: bool) -> WindowPart:
    """The part of ``samples`` that the window ``[start, end]`` counts.

    Args:
        samples: what one process's calls recorded in the step.
        start, end: the measured window, on the clock the samples were taken with.
        by_intended: open loop: latency and errors over the calls intended in the window.

    Raises:
        ValueError: ``end`` is not after ``start``.
    """
    _check(start, end)
    done = np.array(samples.ok_done, dtype=np.float64)  # copies: the loops may still append
    ref = np.array(samples.ok_ref, dtype=np.float64)
    failed = list(samples.failed)
    finished = (start <= done) & (done <= end)
    if by_intended:
        chosen = (start <= ref) & (ref < end)
        errors = Counter(k for r, _, k in failed if start <= r < end)
    else:
        chosen = finished
        errors = Counter(k for _, d, k in failed if start <= d <= end)
    return WindowPart(
        requests=int(finished.sum()),
        latencies=(done - ref)[chosen],
        errors=dict(errors),
        total_ok=len(done),
        total_failed=len(failed),
    )


def merge_parts(parts: Sequence[WindowPart], start: float, end: float) -> ClientStats:
    """The client-side figures of the window ``[start, end]`` from every process's part.

    The result equals ``summarize`` of the union of the processes' samples (see the module).

    Raises:
        ValueError: ``end`` is not after ``start``.
    """
    _check(start, end)
    requests = sum(p.requests for p in parts)
    errors: Counter[str] = Counter()
    for part in parts:
        errors.update(part.errors)
    latencies = (
        np.concatenate([p.latencies for p in parts]) if parts else np.empty(0, dtype=np.float64)
    )
    return ClientStats(
        requests=requests,
        qps=requests / (end - start),
        latency=LatencySummary.of(latencies),
        errors=dict(sorted(errors.items())),
        total_ok=sum(p.total_ok for p in parts),
        total_failed=sum(p.total_failed for p in parts),
    )


def summarize(samples: Samples, start: float, end: float, *, by_intended: bool) -> ClientStats:
    """The client-side figures of the window ``[start, end]`` of one process's samples.

    Args:
        samples: what the step's calls recorded.
        start, end: the measured window, on the clock the samples were taken with.
        by_intended: open loop: latency and errors over the calls intended in the window.

    Raises:
        ValueError: ``end`` is not after ``start``.
    """
    return merge_parts([window_part(samples, start, end, by_intended=by_intended)], start, end)
