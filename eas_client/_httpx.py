"""The httpx adapter: ``HttpxTransport`` / ``AsyncHttpxTransport`` over one httpx client.

Used for an injected ``transport=`` (an ``httpx.BaseTransport``; tests: ``httpx.MockTransport``)
and, one client per instance, for ``https`` instances (``eas_client._wire`` does not do TLS). The
only module of the clients that catches httpx's exceptions: they are converted here, once, by the
table below, and chained. Proxies from the environment are never used (``trust_env=False``).
"""

from __future__ import annotations

import ssl
from typing import Any, Final

import httpx

from ._errors import ConnectError, EasClientError, ProtocolError, TimeoutException, TransportError
from ._transport import Reply, Request, transport_error

__all__ = ["AsyncHttpxTransport", "HttpsPools", "HttpxTransport"]

# httpx's exceptions -> ours; the first match wins, anything else is a plain TransportError (an
# unsupported scheme, too many redirects, ...). A RemoteProtocolError is a connection dropped
# mid-answer or a malformed answer: like a reset, retried on another instance.
_ERRORS: Final[tuple[tuple[type[httpx.HTTPError], type[EasClientError]], ...]] = (
    (httpx.TimeoutException, TimeoutException),
    (httpx.NetworkError, ConnectError),
    (httpx.RemoteProtocolError, ConnectError),
    (httpx.DecodingError, ProtocolError),
)


def _error(exc: httpx.HTTPError, url: str) -> EasClientError:
    kind = next((ours for theirs, ours in _ERRORS if isinstance(exc, theirs)), TransportError)
    return transport_error(kind, exc, url)


def _extensions(request: Request) -> dict[str, Any]:
    timeouts = {
        "connect": request.connect,
        "read": request.timeout,
        "write": request.timeout,
        "pool": request.pool,
    }
    return {"timeout": timeouts}


class HttpxTransport:
    """A ``Transport`` over an ``httpx.Client`` (owned: closed by :meth:`close`)."""

    def __init__(self, client: httpx.Client):
        self._client = client

    @classmethod
    def over(cls, transport: httpx.BaseTransport) -> HttpxTransport:
        """The adapter of an injected httpx transport (closed with it)."""
        return cls(httpx.Client(transport=transport, trust_env=False))

    def send(self, request: Request) -> Reply:
        """See ``Transport.send``."""
        try:
            response = self._client.post(
                request.url,
                content=request.body,
                headers=request.headers,
                extensions=_extensions(request),
            )
        except httpx.HTTPError as exc:
            raise _error(exc, request.url) from exc
        return Reply(response.status_code, response.headers, response.content)

    def discard(self, origin: str) -> None:
        """Nothing to do: one client (one injected transport) serves every instance."""

    def close(self) -> None:
        self._client.close()


class AsyncHttpxTransport:
    """An ``AsyncTransport`` over an ``httpx.AsyncClient`` (owned: closed by :meth:`aclose`)."""

    def __init__(self, client: httpx.AsyncClient):
        self._client = client

    @classmethod
    def over(cls, transport: httpx.AsyncBaseTransport) -> AsyncHttpxTransport:
        """The adapter of an injected httpx transport (closed with it)."""
        return cls(httpx.AsyncClient(transport=transport, trust_env=False))

    async def send(self, request: Request) -> Reply:
        """See ``Transport.send``."""
        try:
            response = await self._client.post(
                request.url,
                content=request.body,
                headers=request.headers,
                extensions=_extensions(request),
            )
        except httpx.HTTPError as exc:
            raise _error(exc, request.url) from exc
        return Reply(response.status_code, response.headers, response.content)

    async def discard(self, origin: str) -> None:
        """Nothing to do: one client (one injected transport) serves every instance."""

    async def aclose(self) -> None:
        await self._client.aclose()


class HttpsPools:
    """Makes the adapter of each ``https`` instance: an httpx client of its own, at most
    ``limit`` connections, all sharing one SSL context (built on first use: loading the CA bundle
    takes milliseconds)."""

    def __init__(self, limit: int):
        self._limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
        self._ssl: ssl.SSLContext | None = None

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context(trust_env=False)
        return self._ssl

    def sync(self) -> HttpxTransport:
        client = httpx.Client(verify=self._context(), limits=self._limits, trust_env=False)
        return HttpxTransport(client)

    def asynchronous(self) -> AsyncHttpxTransport:
        client = httpx.AsyncClient(verify=self._context(), limits=self._limits, trust_env=False)
        return AsyncHttpxTransport(client)
