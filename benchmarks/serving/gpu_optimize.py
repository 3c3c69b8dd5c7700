"""Phase ``optimize``: build the model, the blade artifacts and time the runtimes in-process.

1. ``scripts/build_models.py --only bert-base`` (torch, ~1 min) into WORK/models, and the same
   graph with ``sentence_embedding`` as its only output (``bert-base-pooled.onnx``) for the seed
   phase, whose client (``autoai bench``) cannot name the outputs it wants.
2. ``autoai blade optimize --device cuda`` twice, with the sentences as test data:
   - WORK/blade-128: the model, seq 128 full length, batch sizes 1, 8, 16, 32 (CUDA-graph buckets
     for every batch the serve phase's batcher fires up to 32, padded up to the next);
   - WORK/blade-64: the pooled model, seq 64 padded sentences, batch sizes 8, 12, 16 (the seed
     phase's max batch sizes; a smaller batch replays the bucket of 8).
3. In-process throughput (``gpu_inprocess``) of plain ORT and of the blade-128 artifact.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from blade import render_report

from . import gpu_inprocess
from .gpu_report import Sink, Table
from .gpu_setup import (
    REPO,
    Paths,
    Profile,
    load_inputs,
    pooled_variant,
    python,
    write_test_data,
)

__all__ = ["run"]


def build_model(profile: Profile, paths: Paths, sink: Sink) -> None:
    t0 = time.monotonic()
    cmd = [python(), str(REPO / "scripts" / "build_models.py"), "--only", profile.model]
    subprocess.run([*cmd, "--out", str(paths.models)], check=True)
    pooled_variant(paths.model, paths.pooled)
    sink.say(f"models: {paths.model}, {paths.pooled.name} ({time.monotonic() - t0:.0f} s)")


def optimize(model: Path, out: Path, test_data: Path, batches: tuple[int, ...], device: str) -> Any:
    """``autoai blade optimize`` as a user runs it; returns its report (``--json``)."""
    cmd = [python(), "-m", "autoai.cli", "blade", "optimize", str(model), "--out", str(out)]
    cmd += ["--device", device, "--test-data", str(test_data)]
    cmd += ["--batch-sizes", ",".join(map(str, batches)), "--json"]
    print("$ " + " ".join(cmd), flush=True)
    env = {**os.environ, "COLUMNS": "160"}
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=env)
    return json.loads(done.stdout)


def _summary(report: Any) -> dict[str, Any]:
    chosen: dict[str, Any] = next(
        (p for p in report.get("passes", []) if p["name"] == report["chosen"]), {}
    )
    return {
        "chosen": report["chosen"],
        "reason": report["reason"],
        "speedup": report["speedup"],
        "baseline_ms": report["baseline"]["latency_ms"],
        "chosen_ms": {b: v["after"] for b, v in (chosen.get("latency_ms") or {}).items()},
        "buckets": (chosen.get("notes") or {}).get("buckets"),
        "elapsed_s": report.get("elapsed_s"),
        "hardware_key": report.get("hardware_key"),
    }


def run(profile: Profile, paths: Paths, sink: Sink, where: str) -> None:
    build_model(profile, paths, sink)
    sentences = load_inputs()
    write_test_data(paths, sentences)
    artifacts = {
        "blade-128": (paths.model, paths.blade_serve, 128, profile.blade_batches_serve),
        "blade-64": (paths.pooled, paths.blade_seed, 64, profile.blade_batches_seed),
    }
    # GPU_SERVE_ONLY=1: device time is short; build only what the serve phase needs (it
    # measures the runtime in-process again itself).
    serve_only = os.environ.get("GPU_SERVE_ONLY") == "1"
    if serve_only:
        del artifacts["blade-64"]
    summary = Table(
        f"blade optimize --device {profile.device} ({where})",
        ["artifact", "model", "test data", "batch sizes", "chosen", "speedup", "seconds"],
    )
    for name, (model, out, seq, batches) in artifacts.items():
        t0 = time.monotonic()
        report = optimize(model, out, paths.test_data(seq), batches, profile.device)
        sink.say(f"\n=== blade report: {name} ({where}) ===\n{render_report(report)}")
        sink.record(name, {"summary": _summary(report), "report": report})
        summary.add(
            name,
            model.name,
            f"64 sentences, seq {seq}",
            ",".join(map(str, batches)),
            report["chosen"],
            f"{report['speedup']:.2f}x",
            f"{time.monotonic() - t0:.0f}",
        )
    sink.table(summary)
    if serve_only:
        return
    result = gpu_inprocess.measure(
        str(paths.model),
        str(paths.blade_serve),
        sentences.full,
        profile.in_process_batches,
        profile.loops,
    )
    sink.record("in_process", result.timings)
    sink.table(gpu_inprocess.table(result, where))
