"""The serving benchmark of issues 3 and 16, in one run on this machine.

    python -m benchmarks.serving.run [--models fast,slow] [--formats json,binary,grpc]
                                     [--concurrency 1,8,32] [--duration 8] [--rounds 3] [--quick]

Compares, on two models from `scripts/build_models.py`'s cache (fast: MiniLM cut to 3 layers at
seq 32, ~2.6 ms per call; slow: all-MiniLM-L6-v2 at seq 96, ~13 ms) with one tokenized example
per request: the in-process onnxruntime ceiling, a naive FastAPI + onnxruntime server, ours
(`eas-server`, defaults) and MLServer with adaptive batching, under closed-loop load: wrk with
OIP JSON and binary bodies, h2load with KServe v2 gRPC; then the per-request overhead on an
identity model. All servers stay up and are measured in interleaved rounds (`--rounds`), so
drift of the machine's speed hits them alike. See README.md.
"""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
