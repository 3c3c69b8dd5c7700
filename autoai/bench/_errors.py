"""The one exception hierarchy of ``autoai.bench``; callers need a single ``except BenchError``.

```
BenchError             the benchmark cannot start (nothing was measured), or cannot go on
  ├── BadInput         unknown model or version, inputs that do not match the signature,
  │                    a signature inputs cannot be drawn from, a load that cannot be shared
  │                    by the processes asked for (also a ValueError)
  ├── Unreachable      nothing answers at the URL, or the config store cannot be opened
  └── GeneratorFailed  a generator process (``processes`` > 1) could not start, or failed
                       or ended during the run
```
Errors of single calls during a run are not raised: they are counted by kind in the step's
figures (``errors``). Third-party errors (httpx, the store, the SDK) are converted where the
adapters meet them, and chained.
"""

from __future__ import annotations

__all__ = ["BadInput", "BenchError", "GeneratorFailed", "Unreachable"]


class BenchError(Exception):
    """Base class of the errors that stop a benchmark (before it measures anything, but for
    ``GeneratorFailed``)."""


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


class GeneratorFailed(BenchError):
    """A generator process could not start or build its target, or it failed or ended during
    the run; the message names it (index and PID) and says why. The other processes are ended."""
