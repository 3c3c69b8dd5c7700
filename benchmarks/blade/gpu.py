"""The blade GPU benchmark (issue 4): BERT-base, seq 128, batch 1 and 32, on one GPU.

Runs on the GPU machine in two phases (each one command, well inside 10 minutes):

    python -m benchmarks.blade.gpu optimize --models DIR --work DIR [--inputs NPZ]
    python -m benchmarks.blade.gpu serve    --models DIR --work DIR

``optimize`` builds nothing itself (run scripts/build_models.py --only bert-base first), then runs
blade.optimize on full-length inputs (every token real: the BERT-base "shape" case) and, when
--inputs is given, on real sentences padded to 128. ``serve`` times torch eager fp32/fp16 (what
users would do instead) and the QPS of eas-server's onnx vs blade processors at concurrency 32.
Tables are printed; JSON goes to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from blade import optimize, render_report
from blade._inputs import synthesize
from blade._model import inspect_model

SEQ = 128


def full_length(model: Path, rows: int = 32) -> dict[str, np.ndarray]:
    info = inspect_model(model)
    data = synthesize(info, rows=rows, seq=SEQ, seed=1)
    if info.mask_input:
        data[info.mask_input][:] = 1
    ids = data[info.token_input or "input_ids"]
    rng = np.random.default_rng(2)
    low = min(1000, info.vocab_size // 2)
    ids[ids == 0] = rng.integers(low, info.vocab_size, size=int((ids == 0).sum()))
    return data


def embedding_only(
    model: Path, artifact: Path, data: dict[str, np.ndarray], device: str
) -> dict[str, float]:
    """Latency when only the pooled embedding is fetched (what the SDK asks for), plain vs blade:
    the per-token output (32 x 128 x 768 fp32 at batch 32) stays on the device."""
    from blade import BladeRuntime, RuntimeConfig, load_artifact

    art = load_artifact(artifact)
    runtimes = {
        "plain": BladeRuntime(model, RuntimeConfig(provider=device)),
        "blade": BladeRuntime(art.model_path, art.runtime),
    }
    wanted = frozenset({"sentence_embedding"})
    result: dict[str, float] = {}
    for name, rt in runtimes.items():
        for batch in (1, 32):
            feed = {
                k: np.ascontiguousarray(v[np.arange(batch) % v.shape[0]]) for k, v in data.items()
            }
            for _ in range(5):
                rt.run(feed, wanted)
            samples = []
            for _ in range(50):
                t0 = time.perf_counter()
                rt.run(feed, wanted)
                samples.append(time.perf_counter() - t0)
            result[f"{name} b{batch}"] = float(np.median(samples)) * 1e3
    print("  embedding only (ms): " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()))
    return result


def phase_optimize(args: argparse.Namespace) -> dict[str, Any]:
    bert = args.models / "bert-base.onnx"
    out: dict[str, Any] = {}
    cases = {"full": full_length(bert)}
    if args.inputs:
        with np.load(args.inputs) as npz:
            cases["real"] = {k: npz[k][:32] for k in ("input_ids", "attention_mask")}
    for name, data in cases.items():
        t0 = time.time()
        result = optimize(
            bert,
            device=args.device,
            test_data=data,
            output_dir=args.work / f"bert-{name}.blade",
            batch_sizes=(1, 32),
            cache_dir=args.work / "cache",
        )
        print(f"\n=== BERT-base seq {SEQ}, {name} inputs ({time.time() - t0:.0f} s) ===")
        print(render_report(result.report), flush=True)
        out[name] = result.report
        out[f"{name}_embedding_only_ms"] = embedding_only(
            bert, result.artifact_dir, data, args.device
        )
    return out


def torch_eager(device: str) -> dict[str, float]:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig()).eval().to(device)
    times: dict[str, float] = {}
    for dtype in (torch.float32, torch.float16):
        m = model.to(dtype)
        for batch in (1, 32):
            ids = torch.randint(1000, 30000, (batch, SEQ), device="cuda")
            mask = torch.ones_like(ids)
            with torch.inference_mode():
                for _ in range(10):
                    m(input_ids=ids, attention_mask=mask)
                torch.cuda.synchronize()
                samples = []
                for _ in range(50):
                    start, end = (
                        torch.cuda.Event(enable_timing=True),
                        torch.cuda.Event(enable_timing=True),
                    )
                    start.record()
                    m(input_ids=ids, attention_mask=mask)
                    end.record()
                    torch.cuda.synchronize()
                    samples.append(start.elapsed_time(end))
            times[f"{str(dtype).split('.')[-1]} b{batch}"] = float(np.median(samples))
    return times


def _start(cmd: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("listening on "):
            return proc, line.split()[-1]
    raise RuntimeError(f"server did not start: {cmd}")


def phase_serve(args: argparse.Namespace) -> dict[str, Any]:
    from eas_client import encode_request

    from .loadgen import closed_loop

    out: dict[str, Any] = {
        "torch_eager_ms": torch_eager(args.device) if args.device == "cuda" else {}
    }
    print("\n=== torch eager (ms, median of 50) ===")
    for k, v in out["torch_eager_ms"].items():
        print(f"  {k:14} {v:8.3f}")
    data = full_length(args.models / "bert-base.onnx", rows=1)
    body, length = encode_request(data, outputs=["sentence_embedding"])
    headers = {"Inference-Header-Content-Length": str(length)}
    servers = {
        "onnx": ["--model", str(args.models / "bert-base.onnx")],
        "blade": ["--processor", "blade", "--model", str(args.work / "bert-full.blade")],
    }
    out["serving"] = {}
    print("\n=== eas-server at concurrency 32, batch-1 requests, seq 128, binary (10 s) ===")
    for name, extra in servers.items():
        cmd = [
            sys.executable,
            "-m",
            "eas_server",
            "--name",
            "bert",
            "--port",
            "0",
            "--max-batch-size",
            "32",
        ]
        proc, url = _start([*cmd, "--max-batch-timeout-ms", "5", *extra])
        try:
            target = f"{url}/v2/models/bert/infer"
            closed_loop(target, body, headers, 32, 3.0)  # warm-up
            r = closed_loop(target, body, headers, 32, 10.0)
            out["serving"][name] = r.__dict__
            line = f"{r.rps:9.1f} req/s  p50 {r.p50_ms:7.2f} ms  p99 {r.p99_ms:7.2f} ms"
            print(f"  {name:6} {line}  errors {r.errors}")
        finally:
            proc.terminate()
            proc.wait(30)
    return out


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("phase", choices=["optimize", "serve"])
    p.add_argument("--models", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--inputs", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (a smoke run)")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    result = phase_optimize(args) if args.phase == "optimize" else phase_serve(args)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, default=float))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
