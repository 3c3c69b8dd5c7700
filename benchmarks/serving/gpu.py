"""eas-server on one GPU (issue 16, points 2 and 5; issue 18), in phases of one device command each.

    python3 -m benchmarks.serving.gpu optimize --work /root/work --out $OUT   # ~4 min on an H100
    python3 -m benchmarks.serving.gpu serve    --work /root/work --out $OUT   # ~4 min
    python3 -m benchmarks.serving.gpu seed     --work /root/work --out $OUT   # ~8 min
    python3 -m benchmarks.serving.gpu models   --work /root/work --out $OUT   # <= 9 min
    python3 -m benchmarks.serving.gpu inputs   # rewrites gpu_inputs.npz from minilm-l6.inputs.npz

On the GPU machine each phase runs through ``gpu_lease.sh PHASE`` (it installs the wheels).
``--smoke`` runs the same code on a CPU-only machine: tiny-bert, CPU providers, 1-2 s windows,
less load, no taskset under 8 cores; it checks the flow, not speed.

- ``optimize`` (``gpu_optimize``): builds BERT-base shapes and the two blade artifacts under WORK,
  then times the runtimes in-process.
- ``serve`` (``gpu_serve``): one instance end to end at c=1, 32, 256 vs the runtime alone, the
  targets of point 2.
- ``seed`` (``gpu_seed``): the seed's table shape through the SDK, the goal of point 5.
- ``models`` (``gpu_models``): GPU memory per blade model in one process and per process, and
  one repository-mode instance serving 1, 10 and 100 copies (issue 18).

Every phase prints its tables (titled with the GPU and CPU) and writes ``PHASE.json`` and
``PHASE-tables.txt`` under ``--out`` (rewritten as it goes). See README.md, "GPU (issue 16)".
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .gpu_meter import Nvml
from .gpu_report import Sink
from .gpu_setup import INPUTS, REPO, Paths, machine, profile, write_inputs

PHASES = ("optimize", "serve", "seed", "models", "inputs")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.serving.gpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("phase", choices=PHASES)
    p.add_argument("--work", type=Path, default=Path("/root/work"), help="models and artifacts")
    p.add_argument("--out", type=Path, default=None, help="results (default: WORK/out)")
    p.add_argument("--smoke", action="store_true", help="the same flow on a CPU-only machine")
    p.add_argument(
        "--loadgen-mp",
        type=Path,
        default=REPO / ".whl" / "loadgen_mp.py",
        help="the cross-check generator (default: .whl/loadgen_mp.py, carried, not committed)",
    )
    p.add_argument(
        "--minilm-inputs",
        type=Path,
        default=Path.home() / ".cache" / "autoai" / "models" / "minilm-l6.inputs.npz",
        help="phase inputs: scripts/build_models.py's sentences",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.phase == "inputs":
        print(f"wrote {write_inputs(args.minilm_inputs)} from {args.minilm_inputs}")
        return 0
    if not INPUTS.is_file():
        raise SystemExit(f"{INPUTS} is missing: run `python -m benchmarks.serving.gpu inputs`")
    prof = profile(args.smoke)
    args.work.mkdir(parents=True, exist_ok=True)
    paths = Paths(args.work, prof.model)
    if args.phase != "optimize" and not paths.blade_serve.is_dir():
        raise SystemExit(
            f"{paths.blade_serve} is missing: run the optimize phase first on this machine "
            "(a machine that went idle comes back bare)"
        )
    nvml = Nvml()
    if not args.smoke and not nvml.available:
        raise SystemExit("no GPU through NVML (nvidia-ml-py): use --smoke on a CPU machine")
    where = machine(nvml.name) + (", SMOKE: CPU providers, tiny-bert" if args.smoke else "")
    sink = Sink(args.out or args.work / "out", args.phase)
    sink.record("machine", where)
    sink.record("profile", prof)
    sink.say(f"phase {args.phase} on {where}")
    t0 = time.monotonic()
    # Imported here: the generator processes (spawned: they import this module again) need none.
    if args.phase == "optimize":
        from . import gpu_optimize

        gpu_optimize.run(prof, paths, sink, where)
    elif args.phase == "serve":
        from . import gpu_serve

        gpu_serve.run(prof, paths, sink, where, nvml, args.loadgen_mp)
    elif args.phase == "models":
        from . import gpu_models

        gpu_models.run(prof, paths, sink, where, nvml)
    else:
        from . import gpu_seed

        gpu_seed.run(prof, paths, sink, where, nvml)
    sink.record("elapsed_s", round(time.monotonic() - t0, 1))
    sink.say(f"\nphase {args.phase} done in {time.monotonic() - t0:.0f} s; {sink.json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
