"""Part c: the same models as single-model eas-server processes, one after the other, as many
as fit in the bounds: the count asked, a time limit for starting them, and a floor of available
memory (other work shares this machine; none of it should be pushed out)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from benchmarks.serving.servers import ServerStartError

from . import instance
from .traffic import Tensors


@dataclass
class Singles:
    """What the single-model processes took (bytes, seconds)."""

    asked: int
    started: int = 0
    stopped_by: str = "count"  # what ended the starts: count, time, memory, error
    start_s: list[float] = field(default_factory=list)  # per process, spawn to listening
    wall_s: float = 0.0  # all the starts together
    rss: list[int] = field(default_factory=list)  # per process tree, after one answer each
    pss: list[int] | None = field(default_factory=list)
    error: str = ""

    def json(self) -> dict[str, Any]:
        return {
            "asked": self.asked,
            "started": self.started,
            "stopped_by": self.stopped_by,
            "error": self.error,
            "start_s": self.start_s,
            "start_s_median": statistics.median(self.start_s) if self.start_s else None,
            "wall_s": self.wall_s,
            "rss_bytes": self.rss,
            "rss_bytes_sum": sum(self.rss),
            "rss_bytes_median": statistics.median(self.rss) if self.rss else None,
            "pss_bytes": self.pss,
            "pss_bytes_sum": sum(self.pss) if self.pss is not None else None,
        }


def run(
    paths: Sequence[Path],
    names: Sequence[str],
    row: Tensors,
    work: Path,
    *,
    time_limit_s: float,
    min_available: int,
    server_args: Sequence[str] = (),
) -> Singles:
    """Start one `eas-server --model PATH --name NAME` per model until the bounds, check one
    answer of each, read their memory, stop them all (by PID)."""
    result = Singles(asked=len(paths))
    servers: list[instance.Started] = []
    began = time.perf_counter()
    try:
        for path, name in zip(paths, names, strict=True):
            if time.perf_counter() - began > time_limit_s:
                result.stopped_by = "time"
                break
            if psutil.virtual_memory().available < min_available:
                result.stopped_by = "memory"
                break
            log = work / f"single-{name}.log"
            try:
                args = ["--model", str(path), "--name", name, *server_args]
                servers.append(instance.start(name, args, log))
            except ServerStartError as exc:
                result.stopped_by, result.error = "error", str(exc)
                break
            if len(servers) % 10 == 0:
                avail = psutil.virtual_memory().available / 2**30
                print(f"  {len(servers)} started ({avail:.1f} GiB available)", flush=True)
        result.wall_s = time.perf_counter() - began
        result.started = len(servers)
        result.start_s = [s.start_s for s in servers]
        for s in servers:
            instance.check(s.server.url, s.server.name, row, None)
        readings = [instance.memory(s.server.pid) for s in servers]
        result.rss = [m.rss for m in readings]
        pss = [m.pss for m in readings]
        result.pss = [p for p in pss if p is not None] if all(p is not None for p in pss) else None
    finally:
        instance.stop([s.server for s in servers])
    return result
