"""The three parts of the run, in order: the repository instance (a), its traffic (b), then the
single-model processes (c), each stopped before the next starts, so that their memory and CPU
are measured alone. See run.py's docstring for what each part measures."""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psutil

from autoai.testing import models_dir

from . import instance, singles
from .load import LoadResult, closed_loop
from .traffic import OUTPUT, Tensors, load_rows, model_name, sequence, traffic

SEQUENCE = 400_000  # draws prepared: more than any window sends at this machine's speed


def repo_model(root: Path, index: int) -> Path:
    return root / "repo" / model_name(index) / "1" / "model.onnx"


def extra_model(root: Path) -> Path:
    return root / "extra" / "m100.onnx"


@dataclass
class Part:
    """One measured run of traffic: the load result and the mean batch size over it."""

    result: LoadResult
    mean_batch: float
    models_hit: int
    top_share: float  # the hottest model's share of the requests


@dataclass
class Results:
    """Everything the run measured (bytes, seconds)."""

    models: int
    file_bytes: int  # mean ONNX file size on disk of the served models
    empty_start_s: float = 0.0
    empty_rss: int = 0
    start_s: float = 0.0
    loaded: list[tuple[int, int]] = field(default_factory=list)  # (models, RSS) at start
    rss_start: instance.Memory | None = None
    rss_after_traffic: instance.Memory | None = None
    server_memory: list[int] = field(default_factory=list)  # /v2/resources memory_bytes
    loads: list[dict[str, float]] = field(default_factory=list)
    zipf: Part | None = None
    single: Part | None = None
    singles: singles.Singles | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def slope(self) -> float:
        """RSS per model over the models loaded at start (least squares, the first tenth left
        out: the first model also pays for the runtime's one-time allocations)."""
        points = [(k, r) for k, r in self.loaded if k > max(1, self.models // 10)]
        if len(points) < 2:
            return float("nan")
        k, r = np.array(points, dtype=np.float64).T
        return float(np.polyfit(k, r, 1)[0])

    @property
    def per_model_start(self) -> float:
        """(RSS with every model - RSS of an empty instance) / models, after start."""
        if self.rss_start is None or not self.empty_rss:
            return float("nan")
        return (self.rss_start.rss - self.empty_rss) / self.models

    @property
    def per_model_after(self) -> float:
        if self.rss_after_traffic is None or not self.empty_rss:
            return float("nan")
        return (self.rss_after_traffic.rss - self.empty_rss) / self.models

    @property
    def ratio(self) -> float:
        if self.zipf is None or self.single is None or not self.single.result.rps:
            return float("nan")
        return self.zipf.result.rps / self.single.result.rps

    def json(self) -> dict[str, Any]:
        def part(p: Part | None) -> dict[str, Any] | None:
            if p is None:
                return None
            r = {k: v for k, v in vars(p.result).items() if k != "positions"}
            return {**r, "mean_batch": p.mean_batch, "models_hit": p.models_hit,
                    "top_share": p.top_share}  # fmt: skip

        def mem(m: instance.Memory | None) -> dict[str, Any] | None:
            return None if m is None else {"rss_bytes": m.rss, "pss_bytes": m.pss}

        return {
            "models": self.models,
            "file_bytes": self.file_bytes,
            "empty_instance": {"start_s": self.empty_start_s, "rss_bytes": self.empty_rss},
            "instance": {
                "start_s": self.start_s,
                "memory_start": mem(self.rss_start),
                "memory_after_traffic": mem(self.rss_after_traffic),
                "rss_after_each_load": self.loaded,
                "rss_slope_bytes_per_model": self.slope,
                "per_model_start_bytes": self.per_model_start,
                "per_model_after_traffic_bytes": self.per_model_after,
                "server_memory_bytes": self.server_memory,
                "load_unload": self.loads,
            },
            "zipf": part(self.zipf),
            "single_model": part(self.single),
            "ratio": self.ratio,
            "singles": self.singles.json() if self.singles is not None else None,
            "errors": self.errors,
        }


def _reference(path: Path, row: Tensors) -> npt.NDArray[Any]:
    """The in-process ``sentence_embedding`` of ``row`` (what a served answer is checked
    against)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    out: npt.NDArray[Any] = session.run([OUTPUT], row)[0]
    return out


def _repository(root: Path, count: int, work: Path) -> Path:
    """A repository of the first ``count`` models: links to the built ones, in a directory of
    this run (so a smaller run serves only its models)."""
    repo = work / "repo"
    repo.mkdir()
    for i in range(count):
        (repo / model_name(i)).symlink_to(root / "repo" / model_name(i), target_is_directory=True)
    return repo


def _traffic_run(
    url: str, pid: int, args: argparse.Namespace, names: list[str], rows: list[Tensors]
) -> tuple[Part, Part]:
    """The Zipf window across ``names``, then the same requests all to the first name."""
    models, picks = sequence(len(names), len(rows), SEQUENCE, args.zipf, args.seed)
    spread = traffic(url, names, rows, models, picks)
    one = traffic(url, names[:1], rows, models, picks)

    def part(result: LoadResult, before: tuple[float, float], to_one: bool) -> Part:
        after = instance.batch_totals(url)
        calls = after[1] - before[1]
        hit = models[result.all_positions] if not to_one else np.zeros(result.requests, np.int32)
        counts = np.bincount(hit, minlength=len(names)) if len(hit) else np.zeros(1)
        return Part(
            result, (after[0] - before[0]) / calls if calls else float("nan"),
            int((counts > 0).sum()), float(counts.max() / max(1, counts.sum())),
        )  # fmt: skip

    print(f"traffic  Zipf s={args.zipf} over {len(names)} models, c={args.concurrency}, "
          f"{args.warmup:g} s warm-up + {args.duration:g} s window", flush=True)  # fmt: skip
    before = instance.batch_totals(url)
    zipf = closed_loop(
        url, spread, args.concurrency, processes=args.load_processes, warmup_s=args.warmup,
        server_pid=pid, window_s=args.duration,
    )  # fmt: skip
    zipf_part = part(zipf, before, False)
    print(f"traffic  the same {zipf.requests} requests, all to {names[0]}", flush=True)
    before = instance.batch_totals(url)
    single = closed_loop(
        url, one, args.concurrency, processes=args.load_processes, warmup_s=args.warmup,
        server_pid=pid, replay=zipf.positions,
    )  # fmt: skip
    return zipf_part, part(single, before, True)


def _load_unload(url: str, pid: int, path: Path, repeats: int) -> list[dict[str, float]]:
    """Load one more model (``model_path`` outside the repository) and unload it, ``repeats``
    times; seconds of each call and RSS around them."""
    config = json.dumps({"model_path": str(path)})
    out = []
    for _ in range(repeats):
        rss0 = instance.memory(pid).rss
        t = time.perf_counter()
        instance.post(f"{url}/v2/repository/models/m100/load", {"parameters": {"config": config}})
        load_s = time.perf_counter() - t
        rss1 = instance.memory(pid).rss
        t = time.perf_counter()
        instance.post(f"{url}/v2/repository/models/m100/unload")
        unload_s = time.perf_counter() - t
        rss2 = instance.memory(pid).rss
        out.append({"load_s": load_s, "unload_s": unload_s, "rss_before": rss0,
                    "rss_loaded": rss1, "rss_unloaded": rss2})  # fmt: skip
    return out


def _resources(url: str) -> list[int]:
    doc = json.loads(instance.get_text(f"{url}/v2/resources"))
    return [int(m["memory_bytes"]) for m in doc["models"]]


def run(args: argparse.Namespace, root: Path, work: Path) -> Results:
    names = [model_name(i) for i in range(args.models)]
    paths = [repo_model(root, i) for i in range(args.models)]
    rows = load_rows(models_dir() / "minilm-l6.inputs.npz")
    res = Results(args.models, int(statistics.mean(p.stat().st_size for p in paths)))
    empty = work / "empty"
    empty.mkdir()
    extra = shlex.split(args.server_args)
    started = instance.start("empty", ["--model-repository", str(empty), *extra], work / "e.log")
    try:
        res.empty_start_s, res.empty_rss = started.start_s, instance.memory(started.server.pid).rss
    finally:
        instance.stop([started.server])
    print(f"part a   empty instance: {res.empty_start_s:.1f} s to listen, "
          f"{res.empty_rss / 2**20:.0f} MiB RSS", flush=True)  # fmt: skip

    repo = _repository(root, args.models, work)
    started = instance.start(
        "repository", ["--model-repository", str(repo), *extra], work / "r.log"
    )
    server = started.server
    try:
        res.start_s, res.loaded = started.start_s, started.loaded
        res.rss_start = instance.memory(server.pid)
        res.server_memory = _resources(server.url)
        print(f"part a   {args.models} models: {res.start_s:.1f} s to listen, "
              f"{res.rss_start.rss / 2**20:.0f} MiB RSS", flush=True)  # fmt: skip
        checked = {0, args.models // 2, args.models - 1}
        for i, name in enumerate(names):
            ref = _reference(paths[i], rows[0]) if i in checked else None
            instance.check(server.url, name, rows[0], ref)
        res.loads = _load_unload(server.url, server.pid, extra_model(root), args.load_repeats)
        res.zipf, res.single = _traffic_run(server.url, server.pid, args, names, rows)
        res.rss_after_traffic = instance.memory(server.pid)
    finally:
        instance.stop([server])

    if args.singles:
        print(f"part c   up to {args.singles} single-model processes "
              f"(at most {args.singles_time:g} s of starts, "
              f"{args.min_available_gib:g} GiB left available)", flush=True)  # fmt: skip
        res.singles = singles.run(
            paths[: args.singles], names[: args.singles], rows[0], work,
            time_limit_s=args.singles_time, min_available=int(args.min_available_gib * 2**30),
            server_args=extra,
        )  # fmt: skip
        avail = psutil.virtual_memory().available / 2**30
        print(f"part c   {res.singles.started} started, stopped ({avail:.1f} GiB available now)")
    return res
