"""The transport interface of the clients: one request in, one :class:`Reply` out, or our error.

```
EasClient ── Transport.send(Request) ──► Reply (status, headers, body)
                                    └──► raises ConnectError | TimeoutException | TransportError
                                                | ProtocolError (an answer httpx cannot decode)
```

A client holds one transport and never asks which one it is; the call loop (``eas_client._base``)
reads one reply type. Each adapter converts the exceptions of what it wraps once, inside itself,
and chains them (``raise ConnectError(...) from exc``):

- ``eas_client._instances.Instances`` (the default): a connection pool per instance, the
  keep-alive pools of ``eas_client._wire`` for ``http`` instances, httpx for ``https`` ones;
- ``eas_client._httpx.HttpxTransport``: one ``httpx.Client``, over an injected ``transport=``
  (tests: ``httpx.MockTransport``) and for each ``https`` instance.

:class:`AsyncTransport` is the same for ``AsyncEasClient``. A non-200 answer is a reply, not an
error: what a status means is the call loop's business.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from ._errors import (
    ConnectError,
    EasClientError,
    ProtocolError,
    TimeoutException,
    TransportError,
)

__all__ = [
    "AsyncInstancePool",
    "AsyncTransport",
    "InstancePool",
    "Reply",
    "Request",
    "Transport",
    "transport_error",
]


class Request:
    """One POST the call loop asks a transport to make.

    Attributes:
        url: the instance's infer URL.
        origin: ``scheme://host:port`` of the instance (the key of its connection pool).
        body: the encoded request.
        headers: lower-case names; ``content-length`` is the transport's.
        timeout: seconds the answer may take (write and read).
        connect: seconds a new connection may take.
        pool: seconds to wait for a free pooled connection (httpx; the wire pools wait within
            ``timeout``).
    """

    __slots__ = ("body", "connect", "headers", "origin", "pool", "timeout", "url")

    def __init__(
        self,
        url: str,
        origin: str,
        body: bytes,
        headers: dict[str, str],
        *,
        timeout: float,
        connect: float,
        pool: float,
    ):
        self.url = url
        self.origin = origin
        self.body = body
        self.headers = headers
        self.timeout = timeout
        self.connect = connect
        self.pool = pool


class Reply:
    """An answer: status, headers (looked up by lower-case name), body.

    The adapters hand over what they read, without copying: the wire pools' header dict and
    body bytes, or an httpx response's ``Headers`` and ``content``.
    """

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: Mapping[str, str], content: bytes):
        self.status_code = status_code
        self.headers = headers
        self.content = content


class Transport(Protocol):
    """How ``EasClient`` makes its exchanges."""

    def send(self, request: Request) -> Reply:
        """Make one exchange.

        Raises:
            ConnectError: refused, reset or dropped, or an answer cut short or malformed.
            TimeoutException: connect, read, write or pool timeout.
            ProtocolError: an answer whose content could not be decoded (httpx).
            TransportError: another failure to exchange (an unsupported scheme, ...).
        """
        ...

    def discard(self, origin: str) -> None:
        """Close the connections to ``origin`` (an instance that left discovery)."""
        ...

    def close(self) -> None:
        """Close every connection."""
        ...


class AsyncTransport(Protocol):
    """How ``AsyncEasClient`` makes its exchanges; see :class:`Transport`."""

    async def send(self, request: Request) -> Reply: ...

    async def discard(self, origin: str) -> None: ...

    async def aclose(self) -> None: ...


class InstancePool(Protocol):
    """The connections of one instance, in ``Instances``: a transport for one origin."""

    def send(self, request: Request) -> Reply: ...

    def close(self) -> None: ...


class AsyncInstancePool(Protocol):
    """The connections of one instance, in ``AsyncInstances``."""

    async def send(self, request: Request) -> Reply: ...

    async def aclose(self) -> None: ...


def transport_error(kind: type[EasClientError], exc: BaseException, url: str) -> EasClientError:
    """Our ``kind`` of error for the exception ``exc`` of an exchange with ``url``.

    The adapters raise it ``from exc``; the message names the URL and the original exception.
    """
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if kind is TimeoutException:
        return TimeoutException(f"no answer from {url} in time ({detail})", url=url)
    if kind is ConnectError:
        return ConnectError(f"connection to {url} failed or was dropped ({detail})", url=url)
    if kind is ProtocolError:
        return ProtocolError(f"the answer of {url} could not be decoded ({detail})")
    return TransportError(f"calling {url} failed ({detail})", url=url)
