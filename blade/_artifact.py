"""The artifact (what the blade processor loads), its report, and the cache of artifacts.

```
ARTIFACT/
  model.onnx      the chosen model (the original when nothing beat it)
  blade.json      how to run it: runtime config, tier and gate, signature, source digest
  reference.npz   a few inputs and their fp32 CPU reference outputs (re-verified at load)
  report.json     every pass: metrics, gate, verdict, latency before/after, speedup
  report.txt      the same, as a table
```
The cache key is the model's sha256 + device + CPU ISA or GPU SM + runtime versions + the
settings and test data that decide the outcome.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._hardware import Hardware
from ._model import ModelInfo
from ._runtime import RuntimeConfig
from ._verify import Gate, OutputMetrics

__all__ = [
    "ARTIFACT_FORMAT",
    "Artifact",
    "Outcome",
    "build_report",
    "cache_key",
    "from_cache",
    "load_artifact",
    "render_report",
    "replace_dir",
    "task_cells",
    "task_line",
    "why",
    "write",
]

ARTIFACT_FORMAT = 1
REFERENCE_ROWS = 4


@dataclass(frozen=True)
class Outcome:
    """What one optimize run decided: everything the artifact and its report are written from.

    The optimizer builds it once its passes are done, so this module needs nothing of how the
    candidates were found (and does not import the optimizer).

    Attributes:
        model: the source model.
        hardware: the device the candidates were timed on.
        data: the test data (batch dim first) the reference was computed on.
        reference: fp32 CPU reference outputs for ``data``, padded positions zeroed.
        mask_outputs: outputs whose padded positions are zeroed before comparison.
        batch_sizes: the batch sizes timed.
        buckets: ``[batch, seq]`` shapes for CUDA graphs.
        plain_runtime: how plain ORT ran on the device (the baseline).
        plain_latency: plain's median latency in seconds, by batch size.
        plain_metrics: plain ORT on the device against the reference, by output.
        passes: one report entry per pass tried (see docs/blade.md).
        chosen: the chosen candidate's name, ``"plain"`` when none was kept.
        model_path: the chosen model file (the source model for plain).
        tier: the chosen candidate's accuracy tier (``"lossless"`` for plain).
        gate: the gate of that tier, re-checked when the artifact is loaded.
        runtime: how to run the chosen model.
        reason: why it was chosen.
        speedup: plain latency / chosen latency at the median batch size.
        speedup_geomean: geometric mean of the speedups over all batch sizes.
        synthetic: the test data was drawn from the signature, not given.
        elapsed_s: wall time of the run.
        key: the cache key (see ``cache_key``).
        bundle: the source pipeline bundle's directory when a bundle was optimized.
        task: the report's ``task`` section for a bundle (the labelled set, its metric, the
            fp32 baseline and the tolerance; or a note that only numeric gates judged).
        data_note: where the test data came from, when neither drawn nor given (a bundle's
            evaluation set).
    """

    model: ModelInfo
    hardware: Hardware
    data: Mapping[str, np.ndarray]
    reference: Mapping[str, np.ndarray]
    mask_outputs: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    buckets: tuple[tuple[int, ...], ...]
    plain_runtime: RuntimeConfig
    plain_latency: Mapping[int, float]
    plain_metrics: Mapping[str, OutputMetrics]
    passes: tuple[Mapping[str, Any], ...]
    chosen: str
    model_path: Path
    tier: str
    gate: Gate
    runtime: RuntimeConfig
    reason: str
    speedup: float
    speedup_geomean: float
    synthetic: bool
    elapsed_s: float
    key: str
    bundle: str | None = None
    task: Mapping[str, Any] | None = None
    data_note: str | None = None


def default_cache_dir() -> Path:
    base = os.environ.get("AUTOAI_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "autoai") / "blade"


def cache_key(
    model: ModelInfo,
    hw: Hardware,
    level: str,
    batch_sizes: Sequence[int],
    buckets: Sequence[Sequence[int]],
    tolerance: float | Mapping[str, float] | None,
    data: Mapping[str, np.ndarray],
    synthetic: bool,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """The artifact's cache key; ``extra`` holds what else decides the outcome (for a bundle: its
    files' digest, and the evaluation set's digest and task tolerance when one is given)."""
    h = hashlib.sha256()
    settings = {
        "format": ARTIFACT_FORMAT,
        "hardware": hw.key(),
        "level": level,
        "batch_sizes": list(batch_sizes),
        "buckets": [list(b) for b in buckets],
        "tolerance": tolerance if not isinstance(tolerance, Mapping) else dict(tolerance),
        "synthetic": synthetic,
    }
    if extra:
        settings["extra"] = dict(extra)
    h.update(model.sha256.encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    for name in sorted(data):
        h.update(name.encode())
        h.update(np.ascontiguousarray(data[name]).tobytes())
    return f"{model.sha256[:16]}-{hw.key()}-{h.hexdigest()[:16]}"


def replace_dir(src: Path, dst: Path) -> None:
    """Put ``src`` at ``dst`` (removing what was there) with one rename where possible."""
    if dst.exists():
        old = dst.with_name(dst.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        dst.rename(old)
        src.rename(dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        src.rename(dst)


def from_cache(key: str, out_dir: Path, cache_dir: str | Path | None) -> dict[str, Any] | None:
    """Copy a cached artifact to ``out_dir``; its report (marked as a cache hit) or None."""
    entry = Path(cache_dir or default_cache_dir()) / key
    if not (entry / "blade.json").exists():
        return None
    tmp = Path(
        tempfile.mkdtemp(prefix=".blade-", dir=out_dir.parent if out_dir.parent.exists() else None)
    )
    shutil.rmtree(tmp)
    shutil.copytree(entry, tmp)
    replace_dir(tmp, out_dir)
    report: dict[str, Any] = json.loads((out_dir / "report.json").read_text())
    report["cache"] = {"hit": True, "key": key}
    return report


def _summary(entry: Mapping[str, Any]) -> tuple[str, str, str]:
    metrics = entry.get("metrics") or {}
    cos = min((m["cosine"] for m in metrics.values()), default=None)
    rel = max((m["rel_l2"] for m in metrics.values()), default=None)
    top1 = [m["top1"] for m in metrics.values() if m.get("top1") is not None]
    return (
        "-" if cos is None else f"{cos:.5f}",
        "-" if rel is None else f"{rel:.1e}",
        "-" if not top1 else f"{min(top1):.1%}",
    )


def build_report(o: Outcome) -> dict[str, Any]:
    """The report of a run, as written to ``report.json``."""
    rows = next(iter(o.data.values())).shape[0]
    data_note = o.data_note or (
        f"synthetic: {rows} examples drawn from the signature (token ids from ordinary "
        "embedding rows, masks of ones with some padding, floats from a normal); "
        "pass real test data for a stronger check"
        if o.synthetic
        else f"user: {rows} examples"
    )
    return {
        "model": str(o.model.path),
        "model_sha256": o.model.sha256,
        "bundle": o.bundle,
        "task": None if o.task is None else dict(o.task),
        "device": o.hardware.device,
        "hardware": o.hardware.json(),
        "hardware_key": o.hardware.key(),
        "tensorrt": o.hardware.tensorrt or "not installed",
        "test_data": data_note,
        "batch_sizes": list(o.batch_sizes),
        "buckets": [list(b) for b in o.buckets],
        "baseline": {
            "name": "plain",
            "runtime": o.plain_runtime.json(),
            "latency_ms": {str(b): t * 1e3 for b, t in o.plain_latency.items()},
            "metrics": {k: m.json() for k, m in o.plain_metrics.items()},
        },
        "passes": [dict(p) for p in o.passes],
        "chosen": o.chosen,
        "reason": o.reason,
        "speedup": o.speedup,
        "speedup_geomean": o.speedup_geomean,
        "elapsed_s": o.elapsed_s,
        "cache": {"hit": False, "key": o.key},
    }


def task_line(report: Mapping[str, Any]) -> str | None:
    """One line on how the task metric judged the run (None for a model that is no bundle)."""
    task = report.get("task")
    if not task:
        return None
    if not task.get("metric"):
        return f"task: {task['note']}"
    plain = "" if task.get("plain") is None else f", plain on the device {task['plain']:.2%}"
    return (
        f"task: {task['metric']} on {task['examples']} examples of {task['eval_set']}: fp32 plain "
        f"{task['baseline']:.2%}{plain}; a lossy step may lose {task['tolerance_points']:g} points"
    )


def task_cells(entry: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """A pass's numeric verdict, task metric after it, points lost and task verdict, as table
    cells (``-`` where the pass was not scored)."""
    numeric = (entry.get("numeric") or {}).get("verdict", "-")
    task = entry.get("task")
    if not task:
        return numeric, "-", "-", "-"
    return numeric, f"{task['after']:.2%}", f"{task['lost_points']:.2f}", task["verdict"]


def why(entry: Mapping[str, Any]) -> str | None:
    """Why a pass was not kept, both gates' reasons when both judged it (None when it passed)."""
    if entry["verdict"] == "passed":
        return None
    numeric, task = entry.get("numeric"), entry.get("task")
    if numeric and task:
        return f"numeric: {numeric['reason']}; task: {task['reason']}"
    return str(entry["reason"])


def render_report(report: Mapping[str, Any]) -> str:
    """The report as a fixed-width table (with the task metric per pass for a bundle optimized
    with an evaluation set)."""
    batches = [str(b) for b in report["batch_sizes"]]
    base = report["baseline"]["latency_ms"]
    task = report.get("task") or {}
    judged = bool(task.get("metric"))
    head = (
        f"{'pass':38} {'tier':8} {'verdict':9} {'cosine':>8} {'rel L2':>8} {'top-1':>6} "
        + (f"{'numeric':9} {task['metric']:>8} {'lost':>6} {'task':9} " if judged else "")
        + " ".join(f"{'b' + b + ' ms':>15}" for b in batches)
    )
    plain_task = f"{'':9} {task['baseline']:8.2%} {'':>6} {'':9} " if judged else ""
    lines = [
        f"model {report['model']}  ({report['model_sha256'][:12]})",
        *([f"bundle {report['bundle']}"] if report.get("bundle") else []),
        f"device {report['device']}  hardware {report['hardware_key']}",
        f"tensorrt: {report['tensorrt']}",
        f"test data: {report['test_data']}",
        *([line] if (line := task_line(report)) else []),
        head,
        "-" * len(head),
        f"{'plain (baseline)':38} {'-':8} {'-':9} {'':>8} {'':>8} {'':>6} "
        + plain_task
        + " ".join(f"{base[b]:15.2f}" for b in batches),
    ]
    for entry in report["passes"]:
        cos, rel, top1 = _summary(entry)
        lat = entry.get("latency_ms") or {}
        cells = " ".join(
            f"{lat[b]['after']:7.2f} ({base[b] / lat[b]['after']:4.2f}x)"
            if b in lat
            else f"{'-':>15}"
            for b in batches
        )
        tier, verdict = entry.get("tier", "-"), entry["verdict"]
        scored = ""
        if judged:
            numeric, after, lost, task_verdict = task_cells(entry)
            scored = f"{numeric:9} {after:>8} {lost:>6} {task_verdict[:9]:9} "
        lines.append(
            f"{entry['name'][:38]:38} {tier:8} {verdict:9} {cos:>8} {rel:>8} {top1:>6} "
            f"{scored}{cells}"
        )
        reason = why(entry)
        if reason:
            lines.append(f"{'':4}why: {reason}")
    speedup = f"speedup {report['speedup']:.2f}x at the median batch"
    lines.append(f"chosen: {report['chosen']} ({report['reason']}); {speedup}")
    return "\n".join(lines)


def write(
    out_dir: Path, o: Outcome, report: Mapping[str, Any], cache_dir: str | Path | None
) -> None:
    """Write the artifact next to ``out_dir`` and move it in place, then store it in the cache."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".blade-", dir=out_dir.parent))
    try:
        shutil.copyfile(o.model_path, tmp / "model.onnx")
        doc = {
            "format": ARTIFACT_FORMAT,
            "model": "model.onnx",
            "candidate": o.chosen,
            "tier": o.tier,
            "gate": o.gate.json(),
            "runtime": o.runtime.json(),
            "signature": o.model.signature(),
            "source_sha256": o.model.sha256,
            "hardware_key": o.hardware.key(),
            "batchable": o.model.batchable,
            "mask": {"input": o.model.mask_input, "outputs": list(o.mask_outputs)},
        }
        (tmp / "blade.json").write_text(json.dumps(doc, indent=2))
        n = min(REFERENCE_ROWS, next(iter(o.data.values())).shape[0])
        ref = {f"in:{k}": v[:n] for k, v in o.data.items()}
        ref.update({f"out:{k}": v[:n] for k, v in o.reference.items()})
        np.savez(tmp / "reference.npz", **ref)  # type: ignore[arg-type]
        (tmp / "report.json").write_text(json.dumps(report, indent=2, default=float))
        (tmp / "report.txt").write_text(render_report(report) + "\n")
        entry = Path(cache_dir or default_cache_dir()) / o.key
        if not entry.exists():
            entry.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(tmp, entry.with_name(entry.name + ".tmp"), dirs_exist_ok=True)
            os.replace(entry.with_name(entry.name + ".tmp"), entry)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class Artifact:
    """A written artifact, loaded for serving."""

    def __init__(self, directory: str | Path):
        from ._errors import InvalidModel

        self.dir = Path(directory)
        try:
            self.doc: dict[str, Any] = json.loads((self.dir / "blade.json").read_text())
        except (OSError, ValueError) as exc:
            raise InvalidModel(
                f"{self.dir} is not a blade artifact (no readable blade.json): {exc}"
            ) from exc
        if self.doc.get("format") != ARTIFACT_FORMAT:
            raise InvalidModel(
                f"{self.dir}: artifact format {self.doc.get('format')} is not {ARTIFACT_FORMAT}"
            )
        self.model_path = self.dir / self.doc["model"]
        self.runtime = RuntimeConfig.from_json(self.doc["runtime"])
        self.gate = Gate(**self.doc["gate"])
        self.tier: str = self.doc["tier"]

    def masked(
        self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Outputs with padded positions zeroed, as the stored reference is."""
        from ._verify import masked

        spec = self.doc.get("mask") or {}
        mask = inputs.get(spec["input"]) if spec.get("input") else None
        return masked(outputs, mask, spec.get("outputs", []))

    def reference(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        with np.load(self.dir / "reference.npz") as npz:
            inputs = {k[3:]: npz[k] for k in npz.files if k.startswith("in:")}
            outputs = {k[4:]: npz[k] for k in npz.files if k.startswith("out:")}
        return inputs, outputs


def load_artifact(directory: str | Path) -> Artifact:
    """Read an artifact's description.

    Raises:
        InvalidModel: not an artifact, or of another format.
    """
    return Artifact(directory)
