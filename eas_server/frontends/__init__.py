"""Several HTTP front end processes for one executor, behind one address.

One Python process parses, checks and encodes a few thousand requests a second: enough for a
runtime that needs milliseconds per example on a CPU, not for a GPU that answers a batch of 32 in
2.7 ms. With ``--frontends N`` (``N`` > 1), eas-server's own process becomes the executor (the
model's sessions, the dynamic batcher, the metrics, the registration) and ``N`` front end
processes share its port (``SO_REUSEPORT``), each parsing and encoding requests and handing the
checked tensors to the executor over a Unix socket as raw bytes (``_wire``). Batches still fill
across front ends, because there is one batcher.
"""

from ._hub import FrontendHub
from ._process import main

__all__ = ["FrontendHub", "main"]
