"""The one exception hierarchy of the ``autoai`` command line; commands catch ``CliError`` only.

```
CliError               one line on stderr, exit code 2 (exit_code says otherwise)
  ├── BadUsage         an option's value is malformed (--route 2=ninety, an unreadable file)
  ├── Unreachable      no HTTP answer: nothing listens at the URL, or it timed out
  ├── ApiError         the control plane (or a model server) answered an error status
  └── JobFailed        a job ended in ``failed`` (exit code 1; the message holds the log tail)
```
httpx's exceptions are converted once, in ``_rest``, and chained; they never reach users.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["ApiError", "BadUsage", "CliError", "JobFailed", "Unreachable"]


class CliError(Exception):
    """Base class of the CLI's errors.

    Attributes:
        exit_code: the process's exit status when this error ends a command.
    """

    exit_code: int = 2


class BadUsage(CliError, ValueError):
    """An option's value is malformed; the message names the option and what it expects."""


class Unreachable(CliError):
    """No HTTP answer came back from ``url``.

    Attributes:
        url: the base URL that did not answer.
    """

    def __init__(self, message: str, url: str):
        super().__init__(message)
        self.url = url


class ApiError(CliError):
    """The server answered with an error status and ``{"error": ..., "detail": ...}``.

    Attributes:
        status: the HTTP status (400, 401, 404, 409, 422, 503, ...).
        message: the body's ``error`` (or the reason phrase when the body has none).
        detail: the body's ``detail`` mapping (empty when absent).
    """

    def __init__(
        self,
        status: int,
        message: str,
        detail: Mapping[str, Any] | None = None,
        *,
        hint: str | None = None,
    ):
        super().__init__(f"{message} (HTTP {status}{f'; {hint}' if hint else ''})")
        self.status = status
        self.message = message
        self.detail: dict[str, Any] = dict(detail or {})


class JobFailed(CliError):
    """A job of the control plane failed.

    Attributes:
        job: the job's last state as the API returned it.
    """

    exit_code = 1

    def __init__(self, message: str, job: Mapping[str, Any]):
        super().__init__(message)
        self.job: dict[str, Any] = dict(job)
