"""Processes by PID, through psutil: command lines, liveness, CPU time and memory, and stopping
only the processes a caller started.

Every reader answers "gone" (``""``, ``False``, ``None``, ``0.0``) for a process that has exited
or that this user may not read, instead of raising: a process may exit between two readings.
A zombie (exited, not yet reaped by its parent) counts as gone. ``terminate`` signals only the
PIDs it is given, and with ``mark`` only those whose command line names it, so a PID reused by
another program is never touched (psutil also refuses to signal a PID whose start time changed).
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

__all__ = [
    "Usage",
    "alive",
    "cmdline",
    "cpu_model",
    "cpu_seconds",
    "machine_busy_seconds",
    "machine_cpu_seconds",
    "pids_naming",
    "terminate",
    "tree_cpu_seconds",
    "tree_pids",
    "usage",
    "wait_gone",
]

_GONE = (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied)


def cmdline(pid: int) -> str:
    """The command line of ``pid``, arguments joined by spaces; ``""`` when gone."""
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except _GONE:
        return ""


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except _GONE:
        return False


def pids_naming(mark: str) -> list[int]:
    """Every live process whose command line contains ``mark`` (a run's work directory, say)."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(*_GONE):
            if mark in " ".join(proc.cmdline()) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
    return found


def tree_pids(pid: int) -> set[int]:
    """``pid`` and its live descendants; empty when ``pid`` is gone."""
    try:
        root = psutil.Process(pid)
        children = root.children(recursive=True)
    except _GONE:
        return set()
    return {pid, *(c.pid for c in children)}


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds of the processes (all their threads); gone ones count 0."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(*_GONE):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants; 0 when it is gone."""
    return cpu_seconds(tree_pids(pid))


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores: busy is every state
    but idle and iowait; total adds those two."""
    t = psutil.cpu_times()
    busy = sum(getattr(t, n, 0.0) for n in ("user", "nice", "system", "irq", "softirq", "steal"))
    return busy, busy + t.idle + getattr(t, "iowait", 0.0)


def machine_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot (``machine_cpu_seconds``' first)."""
    return machine_cpu_seconds()[0]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``'s first, on Linux), else what ``platform`` says, else
    ``"unknown CPU"``: for the title of a benchmark's table."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


@dataclass(frozen=True)
class Usage:
    """One process's resident memory and open file descriptors at one moment."""

    pid: int
    rss_kib: int
    fds: int


def usage(pid: int) -> Usage | None:
    """RSS and open descriptors of ``pid``; ``None`` when it is gone."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            return Usage(pid, proc.memory_info().rss >> 10, proc.num_fds())
    except _GONE:
        return None


def wait_gone(pids: Iterable[int], timeout: float, step: float = 0.05) -> bool:
    """Wait until none of ``pids`` runs (zombies count as gone); whether that happened within
    ``timeout`` seconds."""
    left = set(pids)
    deadline = time.monotonic() + timeout
    while True:
        left = {p for p in left if alive(p)}
        if not left:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


def terminate(pids: Iterable[int], *, timeout: float = 10.0, mark: str | None = None) -> list[int]:
    """SIGTERM ``pids``, then SIGKILL what still runs after ``timeout`` seconds.

    Only the PIDs given, never this process, and with ``mark`` only those whose command line
    contains it. A zombie child of this process stays for its parent to reap (``Popen.wait``).

    Returns:
        The PIDs that were signalled.
    """
    procs: list[psutil.Process] = []
    for pid in set(pids) - {os.getpid()}:
        with contextlib.suppress(*_GONE):
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if mark is not None and mark not in " ".join(proc.cmdline()):
                continue
            procs.append(proc)
    for proc in procs:
        with contextlib.suppress(*_GONE):
            proc.terminate()
    if not wait_gone((p.pid for p in procs), timeout):
        for proc in procs:
            with contextlib.suppress(*_GONE):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    proc.kill()
        wait_gone((p.pid for p in procs), 5.0)
    return sorted(p.pid for p in procs)
