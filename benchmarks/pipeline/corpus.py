"""What both pipeline benchmarks read: the bundles `scripts/build_bundles.py` wrote, the
utterances they were trained and held back on, and the CPU the numbers were taken on."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from autoai.testing import cpu_model, models_dir

REPO = Path(__file__).resolve().parents[2]
UTTERANCES = REPO / "scripts" / "data" / "intents.jsonl"
BUNDLES = ("intent", "slots")
BUILD_HINT = "run `make bundles` (python scripts/build_bundles.py) first"
CPU_FLAGS = ("avx512_vnni", "avx512f", "avx2")
"""The flags that decide ONNX Runtime's int8 kernels on x86: VNNI (u8s8 dot products in one
instruction), else AVX-512 or AVX2 (u8s8 with possible saturation of intermediate sums)."""


def bundles_dir() -> Path:
    """`<models dir>/bundles`: where `scripts/build_bundles.py` writes by default."""
    return models_dir() / "bundles"


def missing(root: Path) -> list[str]:
    """The bundle directories and eval sets that are not under `root`."""
    wanted = [*BUNDLES, *(f"{b}-eval.jsonl" for b in BUNDLES)]
    return [name for name in wanted if not (root / name).exists()]


def utterances(path: Path = UTTERANCES) -> list[str]:
    """Every sentence of the data set (train and eval), in file order: real, mixed-length text."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [str(json.loads(line)["text"]) for line in lines if line.strip()]


def cpu_line() -> str:
    """`MODEL NAME, N cores, flags: avx512_vnni yes, avx2 yes` (lscpu, else /proc/cpuinfo)."""
    name, flags, cores = cpu_model(), set[str](), 0
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        out = ""
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name":
            name = value.strip()
        elif key.strip() == "Flags":
            flags = set(value.split())
        elif key.strip() == "CPU(s)" and value.strip().isdigit():
            cores = int(value.strip())
    if not flags:
        try:
            with open("/proc/cpuinfo") as info:
                flags = next(
                    (set(ln.split(":", 1)[1].split()) for ln in info if ln.startswith("flags")),
                    set(),
                )
        except OSError:
            pass
    shown = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in CPU_FLAGS)
    return f"{name}, {cores or '?'} cores, flags: {shown}"
