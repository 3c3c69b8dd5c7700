"""The one exception hierarchy of ``autoai.bench``; callers need a single ``except BenchError``.

```
BenchError             the benchmark cannot start (nothing was measured)
  ├── BadInput         unknown model or version, inputs that do not match the signature,
  │                    a signature inputs cannot be drawn from (also a ValueError)
  └── Unreachable      nothing answers at the URL, or the config store cannot be opened
```
Errors of single calls during a run are not raised: they are counted by kind in the step's
figures (``errors``). Third-party errors (httpx, the store, the SDK) are converted where the
adapters meet them, and chained.
"""

from __future__ import annotations

__all__ = ["BadInput", "BenchError", "Unreachable"]


class BenchError(Exception):
    """Base class of the errors that stop a benchmark before it measures anything."""


class BadInput(BenchError, ValueError):
    """The model, version or inputs asked for cannot be benchmarked; the message says why."""


class Unreachable(BenchError):
    """Nothing answered at ``address`` (an instance URL or a store URL).

    Attributes:
        address: what did not answer.
    """

    def __init__(self, message: str, address: str):
        super().__init__(message)
        self.address = address
