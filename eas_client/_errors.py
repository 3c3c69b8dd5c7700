"""The one exception hierarchy of ``eas_client``; callers need a single ``except EasClientError``.

```
EasClientError
  ├── ProtocolError            malformed OIP message, or a tensor OIP cannot carry (a ValueError)
  ├── NoInstanceAvailable      discovery knows no live instance of the service
  ├── TransportError           no HTTP answer came back (safe to retry on another instance)
  │     ├── ConnectError       the instance refused or dropped the connection
  │     └── TimeoutException   connect, read or pool timeout
  └── ServerError              the instance answered non-200 with ``{"error": ...}``
        ├── InvalidRequest     400: the server rejected the request (bad input, wrong shape)
        ├── Unauthorized       401 / 403: missing or wrong token
        ├── ModelNotFound      404: unknown model or version
        └── ServiceUnavailable 503: queue full, queue timeout expired, or draining
```

``ProtocolError`` is raised by the pure codec (``eas_client._codec``), on the server as well as in
clients; the model server answers it with 400 and the message as ``{"error": ...}``. The others are
raised by the clients. The exceptions of httpx and of sockets are converted once, inside the
transport adapter that met them (``eas_client._transport``), and chained
(``raise ConnectError(...) from exc``).
"""

from __future__ import annotations

__all__ = [
    "ConnectError",
    "EasClientError",
    "InvalidRequest",
    "ModelNotFound",
    "NoInstanceAvailable",
    "ProtocolError",
    "ServerError",
    "ServiceUnavailable",
    "TimeoutException",
    "TransportError",
    "Unauthorized",
]


class EasClientError(Exception):
    """Base class of every error raised by ``eas_client``."""


class ProtocolError(EasClientError, ValueError):
    """A malformed Open Inference Protocol message, or a tensor the protocol cannot carry.

    The message says what was wrong and what was expected, for example
    ``input 'x': binary_data_size is 12 but shape [2, 2] of FP32 needs 16 bytes``; a model server
    sends it back verbatim in its ``{"error": ...}`` body.
    """


class NoInstanceAvailable(EasClientError):
    """No live instance is known for the service (none registered, or all ejected).

    Attributes:
        service: the service that had no instance.
    """

    def __init__(self, message: str, *, service: str | None = None):
        super().__init__(message)
        self.service = service


class TransportError(EasClientError):
    """The request got no HTTP answer; retrying it on another instance is safe for inference.

    Attributes:
        url: the URL that was being called, when known.
    """

    def __init__(self, message: str, *, url: str | None = None):
        super().__init__(message)
        self.url = url


class ConnectError(TransportError):
    """The connection to the instance could not be made, or was dropped."""


class TimeoutException(TransportError):
    """The request timed out (connect, write, read or waiting for a pooled connection)."""


class ServerError(EasClientError):
    """The server answered with a non-200 status; ``message`` is its ``{"error": ...}`` text.

    Build one with :meth:`from_status`, which picks the subclass for the status code.

    Attributes:
        status_code: the HTTP status.
        message: the server's error text.
        retry_after: seconds from a ``Retry-After`` header, when the server sent one.
    """

    def __init__(self, message: str, *, status_code: int, retry_after: float | None = None):
        super().__init__(f"{status_code}: {message}")
        self.status_code = status_code
        self.message = message
        self.retry_after = retry_after

    @classmethod
    def from_status(
        cls, status_code: int, message: str, *, retry_after: float | None = None
    ) -> ServerError:
        """The error for an HTTP status: the subclass from the status table, else ``ServerError``.

        Args:
            status_code: the HTTP status of the answer (not 200).
            message: the ``error`` text of the body (see ``decode_error``).
            retry_after: seconds from the ``Retry-After`` header, if any.

        Returns:
            An ``InvalidRequest``, ``Unauthorized``, ``ModelNotFound``, ``ServiceUnavailable`` or
            plain ``ServerError`` (500 and other codes).
        """
        klass = _STATUS_ERRORS.get(status_code, ServerError)
        return klass(message, status_code=status_code, retry_after=retry_after)


class InvalidRequest(ServerError):
    """400: the server rejected the request (malformed body, unknown input, wrong shape)."""


class Unauthorized(ServerError):
    """401 or 403: the token is missing or wrong."""


class ModelNotFound(ServerError):
    """404: the server does not serve this model or version."""


class ServiceUnavailable(ServerError):
    """503: the queue is full, the request's queue timeout expired, or the instance is draining.

    ``retry_after`` carries the server's ``Retry-After`` hint when it sent one.
    """


# The one status -> exception table of the clients.
_STATUS_ERRORS: dict[int, type[ServerError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Unauthorized,
    404: ModelNotFound,
    503: ServiceUnavailable,
}
