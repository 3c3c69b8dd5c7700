"""Errors of ``eas_server.pipeline``, placed in the eas_server hierarchy so that the server's one
status table covers them.

```
EasServerError
  ├── ModelLoadError
  │     └── BundleError       not servable (spec, tokenizer, labels, head width)
  └── ExamplesError           an evaluation set that does not fit (JSONL, labels)
```
Text that does not fit at request time (invalid UTF-8, a pair that cannot be truncated) is the
server's ``InvalidInput`` (400).
"""

from __future__ import annotations

from .._errors import EasServerError, ModelLoadError

__all__ = ["BundleError", "ExamplesError"]


class BundleError(ModelLoadError):
    """The bundle is not servable; the message says what was wrong and what was expected."""


class ExamplesError(EasServerError, ValueError):
    """A labelled evaluation set cannot be read or does not fit the bundle's task."""
