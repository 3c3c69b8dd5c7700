"""How the runtime shares the cores this process may use: threads per session, whether ONNX
Runtime's threads spin, and whether batches run on the event loop's thread or on worker threads.

The choice is made from the cores the process may actually use (its CPU affinity, capped by a
cgroup CPU quota such as a Kubernetes limit), not from the machine's core count:

- **threads per session** = cores // workers: the runtime gets every core it may use.
- **spinning** only when every thread that may run at once has a core of its own. Spinning
  intra-op threads keep their core busy between operators (which saves a wake-up per operator:
  several percent on a fast model); when there are more of them than cores, they spin against
  the event loop that parses the next requests and writes the answers. Inline, the loop's thread
  is one of the session's threads (ONNX Runtime computes on the calling thread too), so one
  worker with ``threads == cores`` spins; with worker threads, the loop's thread comes on top.
- **inline** (batches run on the event loop's thread) on CPU with one worker whose threads take
  every core. A separate worker thread would only add two thread wake-ups per batch (a KVM vCPU
  that has gone idle takes tens of microseconds to wake), and the parsing it would overlap with
  the runtime has no free core to run on. With several workers, a spare core or a GPU (where the
  runtime waits on the device, not on the cores), batches go to worker threads.

Pure: ``plan_runtime`` takes numbers; ``usable_cores`` reads the affinity and the cgroup files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RuntimePlan", "plan_runtime", "usable_cores"]

_CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1 = (
    Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
    Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
)


def _quota_cores() -> float | None:
    """Cores allowed by a cgroup CPU quota, or None without one."""
    try:
        quota, period = _CGROUP_V2.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(_CGROUP_V1[0].read_text())
        period_us = int(_CGROUP_V1[1].read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup quota (rounded up)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    quota = _quota_cores()
    if quota is not None:
        cores = min(cores, max(1, -(-int(quota * 1000) // 1000)))
    return max(1, cores)


@dataclass(frozen=True, slots=True)
class RuntimePlan:
    """What ``plan_runtime`` chose, and why (logged at start and shown in docs)."""

    cores: int
    threads: int
    spinning: bool
    inline: bool
    reason: str


def plan_runtime(
    cores: int,
    *,
    workers: int = 1,
    device: str = "cpu",
    threads: int | None = None,
    spinning: bool | None = None,
    inline: bool | None = None,
) -> RuntimePlan:
    """Choose threads per session, spinning and the hand-off for ``cores`` usable cores.

    ``threads``, ``spinning`` and ``inline`` given explicitly are kept (a user's setting wins);
    None means choose. Inline needs one worker; it is chosen by itself only on a CPU.
    """
    cores = max(1, cores)
    chosen_threads = threads or max(1, cores // workers)
    chosen_inline = (
        (workers == 1 and device == "cpu" and chosen_threads >= cores)
        if inline is None
        else (inline and workers == 1)
    )
    # Threads that want a core at once: inline, the loop's thread is one of the session's own
    # (ORT computes on the calling thread too); with worker threads, the loop's thread comes on top.
    runnable = chosen_threads if chosen_inline else workers * chosen_threads + 1
    chosen_spinning = runnable <= cores if spinning is None else spinning
    why = [f"{cores} usable cores, {workers} worker(s) x {chosen_threads} threads"]
    if spinning is None:
        why.append(
            "spinning: every spinning thread has a core of its own"
            if chosen_spinning
            else "no spinning: spinning threads would take the event loop's core"
        )
    if inline is None:
        if chosen_inline:
            why.append("batches run on the event loop's thread (no hand-off)")
        elif device != "cpu":
            why.append("batches run on worker threads (the device runs them)")
        else:
            why.append("batches run on worker threads")
    return RuntimePlan(cores, chosen_threads, chosen_spinning, chosen_inline, "; ".join(why))
