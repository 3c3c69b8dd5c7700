"""What a server used over a measured window: CPU cores of its process tree (user + system time,
``autoai.testing.tree_cpu_seconds``), GPU utilisation (NVML, sampled every 100 ms, mean) and GPU
memory.

NVML comes from ``nvidia-ml-py`` (``import pynvml``) where it is installed; without it, or
without a GPU, the GPU figures are None and the tables show ``-``. Per-process GPU memory is
NVML's list of compute processes matched to the server's PIDs; in a container whose PIDs NVML
does not see, the device's used memory minus what was used before the server started is given
instead (``gpu_mib_source`` says which).
"""

from __future__ import annotations

import importlib
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from autoai.testing import tree_cpu_seconds, tree_pids

MIB = 1 << 20


class Nvml:
    """GPU 0 through NVML, or nothing (every reading None) where NVML is missing."""

    def __init__(self) -> None:
        self._nv: Any = None
        self._handle: Any = None
        self.name: str | None = None
        try:
            nv = importlib.import_module("pynvml")
            nv.nvmlInit()
            self._handle = nv.nvmlDeviceGetHandleByIndex(0)
            name = nv.nvmlDeviceGetName(self._handle)
            self.name = name.decode() if isinstance(name, bytes) else str(name)
            self._nv = nv
        except Exception:  # no nvidia-ml-py, no driver, no GPU: the smoke on a CPU machine
            self._nv = None

    @property
    def available(self) -> bool:
        return self._nv is not None

    def utilization(self) -> float | None:
        if self._nv is None:
            return None
        return float(self._nv.nvmlDeviceGetUtilizationRates(self._handle).gpu)

    def memory_used_mib(self) -> float | None:
        if self._nv is None:
            return None
        return float(self._nv.nvmlDeviceGetMemoryInfo(self._handle).used) / MIB

    def process_mib(self, pids: set[int]) -> float | None:
        """GPU memory of the compute processes among ``pids``; None when NVML lists none."""
        if self._nv is None:
            return None
        try:
            procs = self._nv.nvmlDeviceGetComputeRunningProcesses(self._handle)
        except Exception:
            return None
        used = [p.usedGpuMemory for p in procs if p.pid in pids and p.usedGpuMemory is not None]
        return float(sum(used)) / MIB if used else None


@dataclass
class WindowStats:
    """One window's figures (None where not measurable here)."""

    seconds: float = 0.0
    server_cores: float = 0.0
    gpu_util: float | None = None
    gpu_util_samples: int = 0
    gpu_mem_mib: float | None = None
    server_gpu_mib: float | None = None
    gpu_mib_source: str = "-"


class Watch:
    """A context manager around a measured window: enter at its start, exit at its end."""

    def __init__(self, nvml: Nvml, server_pid: int, baseline_mib: float | None):
        self._nvml = nvml
        self._pid = server_pid
        self._baseline = baseline_mib
        self._stop = threading.Event()
        self._samples: list[float] = []
        self._thread: threading.Thread | None = None
        self._t0 = self._cpu0 = 0.0
        self.stats = WindowStats()

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            value = self._nvml.utilization()
            if value is not None:
                self._samples.append(value)

    def __enter__(self) -> Watch:
        self._samples.clear()
        self._stop.clear()
        self._t0, self._cpu0 = time.monotonic(), tree_cpu_seconds(self._pid)
        if self._nvml.available:
            self._thread = threading.Thread(target=self._sample, name="nvml", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        cpu, seconds = tree_cpu_seconds(self._pid) - self._cpu0, time.monotonic() - self._t0
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        samples = self._samples
        self.stats = WindowStats(
            seconds=seconds,
            server_cores=cpu / seconds if seconds > 0 else 0.0,
            gpu_util=sum(samples) / len(samples) if samples else None,
            gpu_util_samples=len(samples),
            gpu_mem_mib=self._nvml.memory_used_mib(),
        )
        self.stats.server_gpu_mib, self.stats.gpu_mib_source = self.server_gpu_mib()

    def server_gpu_mib(self) -> tuple[float | None, str]:
        """The server's GPU memory and where the figure comes from."""
        by_pid = self._nvml.process_mib(tree_pids(self._pid))
        if by_pid is not None:
            return by_pid, "nvml per process"
        used = self._nvml.memory_used_mib()
        if used is None or self._baseline is None:
            return None, "-"
        return used - self._baseline, "device delta"


class Sampler:
    """Samples a server's CPU time and the GPU's utilisation every 100 ms in a thread, for a
    window known only afterwards (a client that times its own window, such as ``autoai bench``)."""

    def __init__(self, nvml: Nvml, server_pid: int, baseline_mib: float | None):
        self._watch = Watch(nvml, server_pid, baseline_mib)
        self._nvml, self._pid = nvml, server_pid
        self._samples: list[tuple[float, float, float | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def _run(self) -> None:
        while True:
            cpu = tree_cpu_seconds(self._pid)
            self._samples.append((time.monotonic(), cpu, self._nvml.utilization()))
            if self._stop.wait(0.1):
                return

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def between(self, t0: float, t1: float) -> WindowStats:
        """The figures over ``[t0, t1]`` (monotonic clock), from the samples inside it."""
        inside = [s for s in self._samples if t0 <= s[0] <= t1]
        stats = WindowStats(gpu_mem_mib=self._nvml.memory_used_mib())
        if len(inside) >= 2:
            (a, cpu_a, _), (b, cpu_b, _) = inside[0], inside[-1]
            stats.seconds, stats.server_cores = b - a, (cpu_b - cpu_a) / (b - a)
        utils = [u for *_, u in inside if u is not None]
        stats.gpu_util = sum(utils) / len(utils) if utils else None
        stats.gpu_util_samples = len(utils)
        stats.server_gpu_mib, stats.gpu_mib_source = self._watch.server_gpu_mib()
        return stats
