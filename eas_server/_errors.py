"""The eas_server exception hierarchy. The HTTP status of each lives in one table in ``_app``.

```
EasServerError
  ├── InvalidInput          the request does not fit the model (400)
  ├── ModelNotFound         unknown model or version (404)
  ├── Unauthorized          missing or wrong token (401)
  ├── PayloadTooLarge       body over --max-body-mb (413)
  ├── Unavailable           the server cannot take the request now (503 + Retry-After)
  │     ├── QueueFull       the bounded queue is full
  │     ├── QueueTimeout    the request's queue timeout expired
  │     └── ShuttingDown    the server is draining
  ├── ProcessorError        the runtime failed on this request (500)
  └── ModelLoadError        the model cannot be loaded or warmed up (startup)
```
"""

from __future__ import annotations

__all__ = [
    "EasServerError",
    "InvalidInput",
    "ModelLoadError",
    "ModelNotFound",
    "PayloadTooLarge",
    "ProcessorError",
    "QueueFull",
    "QueueTimeout",
    "ShuttingDown",
    "Unauthorized",
    "Unavailable",
]


class EasServerError(Exception):
    """Base of every eas_server error."""


class InvalidInput(EasServerError):
    """The request is malformed or does not match the model's signature."""


class ModelNotFound(EasServerError):
    """No such model or version on this server."""


class Unauthorized(EasServerError):
    """The request carries no valid token."""


class PayloadTooLarge(EasServerError):
    """The request body is over the configured limit."""


class Unavailable(EasServerError):
    """Overload or shutdown: retry, possibly on another instance."""

    retry_after = 1


class QueueFull(Unavailable):
    """The batcher's queue holds ``max_queue_size`` requests."""


class QueueTimeout(Unavailable):
    """The request waited in the queue past its timeout."""


class ShuttingDown(Unavailable):
    """The server is draining and takes no new requests."""


class ProcessorError(EasServerError):
    """The runtime raised while running a batch holding this request."""


class ModelLoadError(EasServerError):
    """The model could not be loaded, or failed its warm-up."""
