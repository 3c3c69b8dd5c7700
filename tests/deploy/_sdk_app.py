"""An SDK-using application for tests: ``python -m tests.deploy._sdk_app STORE_URL MODEL``.

It builds a ``ModelClient`` with a registry of its own, serves that registry on
``http://127.0.0.1:<free port>/metrics`` (prometheus_client's exporter) and prints
``metrics on http://127.0.0.1:PORT``. Then each line ``N`` on stdin makes N ``predict`` calls
and answers ``done N``; the process exits at the end of stdin.
"""

from __future__ import annotations

import sys

import numpy as np
from prometheus_client import CollectorRegistry, start_http_server

from autoai.sdk import ModelClient


def main(store_url: str, model: str) -> int:
    registry = CollectorRegistry()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    x = {"x": np.arange(8, dtype=np.float32).reshape(2, 4)}
    with ModelClient(store_url, registry=registry) as client:
        print(f"metrics on http://127.0.0.1:{server.server_port}", flush=True)
        for line in sys.stdin:
            calls = int(line)
            for _ in range(calls):
                client.predict(model, x)
            print(f"done {calls}", flush=True)
    server.shutdown()
    thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
