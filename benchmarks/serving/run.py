#!/usr/bin/env python3
"""The serving benchmark of issue 3, in one run on this machine.

    python benchmarks/serving/run.py [--model PATH] [--seq 32] [--concurrency 1,8,32]
                                     [--duration 15] [--quick]

Compares, on all-MiniLM-L6-v2 (from `scripts/build_models.py`'s cache) with one tokenized
example per request: the in-process onnxruntime ceiling, a naive FastAPI + onnxruntime server,
ours (`eas-server`) and MLServer with adaptive batching, under closed-loop wrk load with OIP JSON
and binary bodies; then the per-request overhead on an identity model. All servers stay up and
are measured in interleaved rounds (`--rounds`), so drift of the machine's speed hits them alike.
See README.md.
"""

import sys
from pathlib import Path

# `serving` is this directory as a package: put its parent on the path when run as a script.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
