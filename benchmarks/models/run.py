"""A hundred models on one machine (issue 18, the 2-core target), in one run:

    python -m benchmarks.models.run [--models 100] [--duration 20] [--concurrency 32]
                                    [--singles 100] [--singles-time 300] [--quick]

100 versions of a small BERT (hidden 256, 4 layers, different weights each:
`scripts/build_multimodel.py`, run first when its files are missing), all on one
`eas-server --model-repository` instance against the same models as single-model processes:

a. the instance: start time, RSS, memory per added model (RSS slope over the models it loaded
   at start, and its RSS less an empty instance's, each against the ONNX file size on disk), the
   time to load one more model through the repository API and to unload it;
b. Zipf(s) traffic across the models at concurrency C (closed loop, binary OIP, keep-alive,
   `load.py`'s processes), then exactly the requests that window answered, all sent to `m000`
   on the same instance: req/s, p50/p99, errors, mean batch size (`eas_batch_size`), the ratio;
c. single-model `eas-server` processes, one after the other, as many as the bounds allow:
   total RSS (and PSS), per-process RSS, start times.

Tables are printed side by side at the end and written as JSON to
`benchmarks/models/results/models-<time>.json`. See README.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

from autoai.testing import machine_busy_seconds, models_dir

from . import report, scenario

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.models.run", description=__doc__)
    a = p.add_argument
    a("--models", type=int, default=100, help="model versions on the instance (1-100)")
    a("--duration", type=float, default=20.0, help="seconds of the measured Zipf window")
    a("--warmup", type=float, default=3.0, help="seconds of load before each measured run")
    a("--concurrency", type=int, default=32, help="connections of the closed loop")
    a("--zipf", type=float, default=1.1, help="Zipf exponent s of the traffic over the models")
    a("--load-processes", type=int, default=2, help="load generator processes")
    a("--load-repeats", type=int, default=3, help="load + unload of one more model, repeated")
    a("--singles", type=int, default=None, help="single-model processes to try (default: --models)")
    a("--singles-time", type=float, default=300.0, help="most seconds spent starting them")
    a(
        "--min-available-gib",
        type=float,
        default=6.0,
        help="stop starting single-model processes below this much available memory",
    )
    a(
        "--server-args",
        default="",
        help="more eas-server flags for every server, one string (e.g. '--intra-op-threads 1'); "
        "default: none, the server's defaults",
    )
    a("--seed", type=int, default=0, help="seed of the traffic's draws")
    a("--json", type=Path, default=None, help="default: results/models-<time>.json")
    a("--quick", action="store_true", help="10 models, 5 s window, 10 singles: a smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.duration, args.warmup = min(args.models, 10), 5.0, 2.0
        args.singles = 10 if args.singles is None else args.singles
    if args.singles is None:
        args.singles = args.models
    args.singles = min(args.singles, args.models)  # the same models, one process each
    if not 1 <= args.models <= 100 or not 0 <= args.singles <= 100:
        p.error("--models must be 1..100 and --singles 0..100")
    return args


def _cpu() -> dict[str, Any]:
    """The CPU as lscpu names it, whether it has AVX-512 VNNI, and the cores this run may use."""
    found: dict[str, Any] = {"model": "unknown", "avx512_vnni": False}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name":
            found["model"] = value.strip()
        elif key.strip() == "Flags":
            found["avx512_vnni"] = "avx512_vnni" in value.split()
    found["cores"] = len(os.sched_getaffinity(0))
    return found


def ensure_models(count: int) -> Path:
    """The multimodel directory, built by `scripts/build_multimodel.py` when anything is
    missing."""
    root = models_dir() / "multimodel"
    wanted = [scenario.repo_model(root, i) for i in range(count)] + [scenario.extra_model(root)]
    inputs = models_dir() / "minilm-l6.inputs.npz"
    if not all(p.exists() for p in [*wanted, inputs]):
        print("models   missing: running scripts/build_multimodel.py")
        script = REPO_ROOT / "scripts" / "build_multimodel.py"
        subprocess.run([sys.executable, str(script)], check=True)
    return root


def _on_sigterm(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the servers


def main(argv: list[str] | None = None) -> int:
    began = time.monotonic()
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    cpu = _cpu()
    vnni = "yes" if cpu["avx512_vnni"] else "no"
    print(f"CPU      {cpu['model']}, {cpu['cores']} cores, avx512_vnni {vnni}")
    busy = machine_busy_seconds()
    time.sleep(1.0)
    busy = machine_busy_seconds() - busy
    print(f"machine  load average {os.getloadavg()[0]:.2f}, {busy:.2f} cores busy before the run")
    if busy > 0.2:
        print("warning: other work on this machine distorts every number ('other cores' columns)")
    root = ensure_models(args.models)
    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu": cpu,
        "busy_cores_before": busy,
        "loadavg_start": os.getloadavg()[0],
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    with tempfile.TemporaryDirectory(prefix="models-bench-") as tmp:
        results = scenario.run(args, root, Path(tmp))
    meta["loadavg_end"] = os.getloadavg()[0]
    meta["wall_s"] = round(time.monotonic() - began, 1)
    report.render(meta, results)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = args.json or HERE / "results" / f"models-{stamp}.json"
    report.write_json(path, meta, results)
    print(f"wall time {meta['wall_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
