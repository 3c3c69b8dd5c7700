"""Task accuracy of the intent and slot bundles on their held-back sentences: plain, blade, int8.

    python scripts/build_bundles.py                  # once (make bundles)
    python -m benchmarks.pipeline.accuracy [--bundles DIR] [--no-blade] [--out results.json]

Each variant runs the same bundle's tokenization and post-processing (``eas_server.pipeline``
``evaluate``: intent accuracy, micro F1 of (slot, value) spans) with another model behind it:

- **plain**: ``model.onnx`` as exported (fp32) on ONNX Runtime's CPU provider;
- **blade**: ``blade.optimize`` on the bundle with its eval set (the task gate: a lossy step that
  loses more than 0.5 points is refused), served as the derived bundle's artifact is served
  (``BladeRuntime``); the table names the tier blade kept and its gate's verdict (blade's speedup
  is left out: it times feeds padded to ``max_length``, not the pipeline's batches);
- **int8**: ONNX Runtime's dynamic quantization of ``model.onnx`` (``quantize_dynamic``, int8
  weights, activations quantized per batch), with no gate: what a user gets who quantizes
  without checking.

The eval sentences share no template with the training ones (``scripts/data``). The title names
the CPU: int8 kernels differ with AVX-512 VNNI and AVX2.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eas_server.pipeline import Bundle, RunFn, evaluate, load_bundle, read_examples

from ..serving.report import _table
from .corpus import BUILD_HINT, BUNDLES, bundles_dir, cpu_line, missing

VARIANTS = ("plain", "blade", "int8")


@dataclass(frozen=True)
class Score:
    """One variant of one bundle: its task metric and what it ran."""

    bundle: str
    variant: str
    metric: str
    value: float
    examples: int
    model_mib: float
    seconds: float  # the whole evaluation, batches of 32
    note: str = ""


def ort_run_fn(model: Path) -> RunFn:
    """A run_fn on ONNX Runtime's CPU provider (the onnx processor's provider)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, dict(feeds)), strict=True))

    return run


def quantized(model: Path, out: Path) -> Path:
    """ONNX Runtime's dynamic int8 quantization of ``model`` (int8 weights) at ``out``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(model), str(out), weight_type=QuantType.QInt8)
    return out


def blade_bundle(bundle: Path, eval_set: Path, out: Path) -> tuple[Path, str]:
    """``blade.optimize`` on the bundle with its eval set; (derived bundle, what blade kept)."""
    from blade import optimize

    result = optimize(bundle, device="cpu", eval_set=eval_set, output_dir=out, progress=False)
    report = result.report
    kept = str(report.get("chosen") or "plain")
    passes = report.get("passes", [])
    refused = [p["name"] for p in passes if (p.get("task") or {}).get("verdict") == "rejected"]
    task = next((p.get("task") or {} for p in passes if p.get("name") == kept), {})
    note = f"kept {kept}"
    if task:  # blade's own verdict on the kept step: its numbers, on the same eval set
        note += f" (task gate {task.get('verdict')}, {-float(task['lost_points']):+.2f} points)"
    if refused:
        note += f"; refused {', '.join(refused)}"
    return result.artifact_dir, note


def blade_run_fn(derived: Bundle) -> tuple[RunFn, Path]:
    """The derived bundle's artifact run as the blade processor runs it; (run_fn, its model)."""
    from blade import BladeRuntime, load_artifact

    artifact = load_artifact(derived.model_path)
    runtime = BladeRuntime(artifact.model_path, artifact.runtime)
    return runtime.run, artifact.model_path


def _mib(path: Path) -> float:
    return path.stat().st_size / 2**20


def score(
    name: str, variant: str, bundle: Bundle, run_fn: RunFn, model: Path, eval_set: Path, note: str
) -> Score:
    """``evaluate`` on the eval set, timed (batches of 32, as blade's task gate runs them)."""
    examples = read_examples(eval_set, bundle.spec)
    started = time.perf_counter()
    got = evaluate(bundle, run_fn, examples)
    took = time.perf_counter() - started
    return Score(name, variant, got.metric, got.value, got.examples, _mib(model), took, note)


def measure(root: Path, name: str, variants: list[str], work: Path) -> list[Score]:
    """Every wanted variant of bundle ``name`` under ``root``."""
    path, eval_set = root / name, root / f"{name}-eval.jsonl"
    bundle = load_bundle(path)
    scores = []
    for variant in variants:
        used = bundle
        if variant == "plain":
            run_fn, model, note = ort_run_fn(bundle.model_path), bundle.model_path, "fp32"
        elif variant == "int8":
            model = quantized(bundle.model_path, work / f"{name}.int8.onnx")
            run_fn, note = ort_run_fn(model), "quantize_dynamic, QInt8 weights"
        else:
            derived_dir, note = blade_bundle(path, eval_set, work / f"{name}.blade")
            used = load_bundle(derived_dir)
            run_fn, model = blade_run_fn(used)
        scores.append(score(name, variant, used, run_fn, model, eval_set, note))
        s = scores[-1]
        print(
            f"{name:7s} {variant:6s} {s.metric} {s.value:.4f} on {s.examples} sentences "
            f"({s.model_mib:.1f} MiB, {s.seconds:.1f} s) {note}",
            flush=True,
        )
    return scores


def table(scores: list[Score], title: str) -> None:
    by = {(s.bundle, s.variant): s for s in scores}
    variants = [v for v in VARIANTS if any(s.variant == v for s in scores)]
    headers = ["variant", "intent accuracy", "slot F1", "intent MiB", "slots MiB", "notes"]
    rows = []
    for variant in variants:
        cells = [by.get((b, variant)) for b in BUNDLES]
        values = [f"{c.value * 100:.1f} %" if c else "-" for c in cells]
        sizes = [f"{c.model_mib:.1f}" if c else "-" for c in cells]
        notes = "; ".join(f"{c.bundle}: {c.note}" for c in cells if c and c.note)
        rows.append([variant, *values, *sizes, notes])
    _table(title, headers, rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pipeline.accuracy", description=__doc__)
    p.add_argument("--bundles", type=Path, default=None, help="default: <models dir>/bundles")
    p.add_argument("--no-blade", action="store_true", help="skip blade.optimize (minutes)")
    p.add_argument("--out", type=Path, default=None, help="also write the scores as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root: Path = args.bundles or bundles_dir()
    absent = missing(root)
    if absent:
        print(f"{root}: missing {', '.join(absent)}: {BUILD_HINT}", file=sys.stderr)
        return 2
    variants = [v for v in VARIANTS if not (args.no_blade and v == "blade")]
    cpu = cpu_line()
    print(cpu)
    scores: list[Score] = []
    with tempfile.TemporaryDirectory(prefix="bundle-accuracy-") as tmp:
        for name in BUNDLES:
            scores += measure(root, name, variants, Path(tmp))
    examples = {s.bundle: s.examples for s in scores}
    title = (
        "Held-back accuracy of the pipeline bundles (all-MiniLM-L6-v2 + trained heads; "
        f"{examples['intent']} intent / {examples['slots']} slot sentences of unseen templates) "
        f"on {cpu}"
    )
    table(scores, title)
    if args.out:
        doc: dict[str, Any] = {"cpu": cpu, "scores": [asdict(s) for s in scores]}
        args.out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
