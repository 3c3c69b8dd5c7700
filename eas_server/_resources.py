"""What this process holds and what the machine has left: host memory (within the cgroup's limit
when there is one) and, where NVML is installed, GPU memory. Placement reads it through
``GET /v2/resources``; a load measures what it added."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import psutil

__all__ = ["gpu_memory", "host_memory", "process_gpu_bytes", "rss_bytes"]

_CGROUP = Path("/sys/fs/cgroup")


def rss_bytes() -> int:
    """Resident memory of this process."""
    return int(psutil.Process().memory_info().rss)


def _cgroup_value(name: str) -> int | None:
    try:
        text = (_CGROUP / name).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def host_memory() -> tuple[int, int]:
    """(total, available) bytes for this process: the machine's, or its cgroup's when that is
    smaller (a container's limit is what an out-of-memory kill enforces)."""
    vm = psutil.virtual_memory()
    total, available = int(vm.total), int(vm.available)
    limit = _cgroup_value("memory.max")
    if limit is not None and limit < total:
        used = _cgroup_value("memory.current") or 0
        total, available = limit, max(0, min(available, limit - used))
    return total, available


def _nvml() -> Any:
    try:
        import pynvml  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver, no device: as if not installed
        return None
    return pynvml


def gpu_memory() -> list[dict[str, int]]:
    """Per device: ``{"index", "used_bytes", "total_bytes"}`` (empty without NVML or a GPU)."""
    nvml = _nvml()
    if nvml is None:
        return []
    found = []
    with contextlib.suppress(Exception):
        for index in range(nvml.nvmlDeviceGetCount()):
            info = nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(index))
            found.append(
                {"index": index, "used_bytes": int(info.used), "total_bytes": int(info.total)}
            )
    return found


def process_gpu_bytes() -> int | None:
    """GPU memory this process holds on every device (None: not measurable here)."""
    nvml = _nvml()
    if nvml is None:
        return None
    pid, total = psutil.Process().pid, 0
    try:
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == pid and proc.usedGpuMemory:
                    total += int(proc.usedGpuMemory)
    except Exception:
        return None
    return total
