"""The blade CPU benchmark (issue 4): all-MiniLM-L6-v2 and BERT-base at seq 128, batch 1 and 32,
plain ORT vs the artifact blade.optimize picks, with the accuracy it verified.

    python scripts/build_models.py            # once: the models and real tokenized sentences
    python -m benchmarks.blade.cpu [--models DIR] [--full-length]

Inputs are 32 real sentences tokenized to seq 128 (right-padded, as tokenizers do by default);
``--full-length`` also runs inputs with every token real (no padding), where padding cannot be
skipped. Prints one table; JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from autoai.testing import cpu_model, models_dir
from blade import optimize


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    base = report["baseline"]["latency_ms"]
    chosen = next((p for p in report["passes"] if p["name"] == report["chosen"]), None)
    after = chosen["latency_ms"] if chosen else {b: {"after": t} for b, t in base.items()}
    metrics = (chosen or {}).get("metrics", {})
    return {
        "plain_ms": {b: base[b] for b in ("1", "32")},
        "blade_ms": {b: after[b]["after"] for b in ("1", "32")},
        "ratio": {b: after[b]["after"] / base[b] for b in ("1", "32")},
        "chosen": report["chosen"],
        "cosine": {k: v["cosine"] for k, v in metrics.items()},
    }


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", type=Path, default=models_dir())
    p.add_argument("--work", type=Path, default=Path("/tmp/blade-cpu-bench"))
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--full-length", action="store_true", help="also inputs without padding")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    with np.load(args.models / "minilm-l6.inputs.npz") as npz:
        real = {k: npz[k][: args.rows] for k in ("input_ids", "attention_mask")}
    cases: dict[str, dict[str, np.ndarray]] = {"real sentences": real}
    if args.full_length:
        rng = np.random.default_rng(0)
        ids = rng.integers(1000, 30000, size=real["input_ids"].shape, dtype=np.int64)
        cases["full length"] = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    rows: list[dict[str, Any]] = []
    for model in ("minilm-l6", "bert-base"):
        path = args.models / f"{model}.onnx"
        if not path.exists():
            print(f"skip {model}: {path} missing (run scripts/build_models.py)")
            continue
        for case, data in cases.items():
            result = optimize(
                path,
                device="cpu",
                test_data=data,
                output_dir=args.work / f"{model}-{case.replace(' ', '-')}.blade",
                batch_sizes=(1, 32),
                cache_dir=args.work / "cache",
            )
            rows.append(
                {"model": model, "inputs": case, **_summary(result.report), "report": result.report}
            )
    print(f"\nblade on CPU: {cpu_model()}, {os.cpu_count()} cores, seq 128 (median latency, ms)")
    cols = ("model", "inputs", "plain b1", "blade b1", "ratio", "plain b32", "blade b32", "ratio")
    widths = (10, 15, 9, 9, 6, 10, 10, 6)
    head = (
        " ".join(f"{c:>{w}}" for c, w in zip(cols, widths, strict=True)) + "  chosen / min cosine"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        cos = ", ".join(f"{k} {v:.4f}" for k, v in r["cosine"].items())
        cells = (
            r["model"],
            r["inputs"],
            f"{r['plain_ms']['1']:.2f}",
            f"{r['blade_ms']['1']:.2f}",
            f"{r['ratio']['1']:.2f}",
            f"{r['plain_ms']['32']:.1f}",
            f"{r['blade_ms']['32']:.1f}",
            f"{r['ratio']['32']:.2f}",
        )
        line = " ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True))
        print(f"{line}  {r['chosen']} / {cos}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
