"""blade on a generation bundle, on one GPU (issue 20): whisper-base exported, optimized with
``--device cuda``, and its encoder and decoder steps timed in process.

    python -m benchmarks.generation.gpu_blade --work DIR [--size base] [--out FILE.json]

On the GPU machine (no network; torch and transformers are there, onnxruntime-gpu and our
wheels carried: see benchmarks/serving/gpu_lease.sh). One command, under 5 minutes:

1. export: ``scripts/whisper_export.py --size SIZE --no-check`` into WORK (seeded weights; the
   export's own checks against torch are the CPU tests' business);
2. optimize: ``blade.optimize(bundle, device="cuda")``: the derived bundle and its report
   (printed);
3. timings (medians, in process, ms): the encoder at batch 1, 8, 32 (``encode``: features in,
   cross-attention caches out, where the runtime keeps them), and one decoder step
   (``Cache.step``, the cache update included) at batch 1, 8, 32 with 64 and 128 cache entries,
   for: plain CUDA fp32 (caches in numpy: ONNX Runtime copies them to the device every step),
   blade fp16 (fp32 IO) + IO binding with the caches on the device, the same + CUDA graphs
   (the decoder per rows x cache bucket, the encoder per batch bucket). The fp16 files are
   built here with blade's own fp16 pass whatever the optimizer chose, so that the table has
   every row; the report says what was chosen and why.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
BATCHES = (1, 8, 32)
CACHES = (64, 128)


def export(size: str, work: Path) -> Path:
    """The bundle of ``size`` under ``work`` (exported once; a complete one is reused)."""
    out = work / f"whisper-{size}"
    if (out / "generation.json").is_file():
        return out
    script = REPO / "scripts" / "whisper_export.py"
    cmd = [sys.executable, str(script), "--size", size, "--out", str(out), "--no-check"]
    subprocess.run(cmd, check=True)
    return out


def _ms(fn: Any, runs: int = 20) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e3)


def variants(bundle: Path, work: Path) -> dict[str, Any]:
    """The three runtimes of the table (name -> BladeSeq2Seq)."""
    from blade import RuntimeConfig
    from blade._model import inspect_model
    from blade._passes import build_fp16
    from blade._seq2seq import BladeSeq2Seq, Seq2SeqConfig, row_buckets
    from eas_server.generation._cache import buckets
    from eas_server.generation._spec import read_spec

    spec = read_spec(bundle)
    half: dict[str, Path] = {}
    for part in ("encoder", "decoder"):
        source = bundle / f"{part}.onnx"
        half[part] = work / f"{part}-fp16.onnx"
        if not half[part].exists():
            build_fp16(inspect_model(source), source, half[part], RuntimeConfig())
    plain = RuntimeConfig(provider="cuda")
    graph_rows = row_buckets(max(BATCHES))
    encoder_graphs = RuntimeConfig(
        provider="cuda", cuda_graph=True, buckets=[[b, 0] for b in graph_rows]
    )
    decoder_graphs = RuntimeConfig(
        provider="cuda",
        cuda_graph=True,
        buckets=[[r, s] for r in graph_rows for s in buckets(spec.max_target_positions)],
    )
    return {
        "plain CUDA fp32": lambda: BladeSeq2Seq(
            bundle / "encoder.onnx", bundle / "decoder.onnx", Seq2SeqConfig(plain, plain)
        ),
        "blade fp16 + IO binding": lambda: BladeSeq2Seq(
            half["encoder"], half["decoder"], Seq2SeqConfig(plain, plain, device_cache=True)
        ),
        "+ CUDA graphs": lambda: BladeSeq2Seq(
            half["encoder"],
            half["decoder"],
            Seq2SeqConfig(encoder_graphs, decoder_graphs, device_cache=True),
        ),
    }


def timings(bundle: Path, work: Path) -> dict[str, dict[str, float]]:
    from blade._geneval import front_end, synthetic_clips, time_steps
    from eas_server.generation._spec import read_spec

    spec = read_spec(bundle)
    clips = synthetic_clips(spec, max(BATCHES))
    features = front_end(spec).batch(clips)
    table: dict[str, dict[str, float]] = {}
    for name, make in variants(bundle, work).items():
        row: dict[str, float] = {}
        try:
            runtime = make()
            for batch in BATCHES:
                encode = functools.partial(runtime.encode, features[:batch])
                row[f"encoder b{batch}"] = _ms(encode, runs=10)
            for length in CACHES:
                steps = time_steps(runtime, spec, features, BATCHES, length, budget_s=1.0)
                for batch, seconds in steps.items():
                    row[f"step b{batch} c{length}"] = seconds * 1e3
            del runtime
        except Exception as exc:  # one variant that cannot run must not hide the others
            print(f"{name}: {type(exc).__name__}: {exc}", flush=True)
        table[name] = row
        print(f"timed {name}", flush=True)
    return table


def print_table(table: dict[str, dict[str, float]]) -> None:
    columns = list(dict.fromkeys(c for row in table.values() for c in row))
    if not columns:
        print("no timings")
        return
    width = max(len(c) for c in columns) + 2
    names = list(table)
    print(f"{'ms (median)':{width}}" + "".join(f"{n:>26}" for n in names))
    base = table[names[0]]
    for col in columns:
        cells = ""
        for n in names:
            got = table[n].get(col)
            if got is None:
                cells += f"{'-':>25} "
            elif col in base:
                cells += f"{got:14.3f} ({base[col] / got:5.2f}x) "
            else:
                cells += f"{got:14.3f} {'':8} "
        print(f"{col:{width}}{cells}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="where the bundles go")
    parser.add_argument("--size", default="base", choices=("micro", "tiny", "base"))
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--skip-optimize", action="store_true", help="timings only")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    from blade import optimize

    started = time.time()
    bundle = export(args.size, args.work)
    print(f"exported {bundle} in {time.time() - started:.0f} s", flush=True)
    figures: dict[str, Any] = {"size": args.size}
    if not args.skip_optimize:
        began = time.time()
        try:
            result = optimize(
                bundle,
                device="cuda",
                output_dir=args.work / f"whisper-{args.size}.blade",
                cache_dir=args.work / "cache",
                progress=True,
            )
        except Exception:  # the timings below still say what the runtimes do
            traceback.print_exc()
        else:
            print((result.artifact_dir / "report.txt").read_text(), flush=True)
            figures["report"] = result.report
        figures["optimize_s"] = time.time() - began
        print(f"optimize: {figures['optimize_s']:.0f} s", flush=True)
    table = timings(bundle, args.work)
    print_table(table)
    figures["timings_ms"] = table
    figures["total_s"] = time.time() - started
    print(f"total {figures['total_s']:.0f} s")
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
