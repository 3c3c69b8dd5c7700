"""The transport interface against real sockets: both adapters (the wire pools of the default
transport, and httpx), sync and async, give one ``Reply`` type and convert their failures into
our errors, chained: a refused port, a server that closes mid-answer or answers garbage, a silent
server. Then the clients over both adapters: a dropped answer is retried on another instance, a
refused connection ends as ``NoInstanceAvailable``."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest

from eas_client import (
    AsyncEasClient,
    ConnectError,
    EasClient,
    NoInstanceAvailable,
    ProtocolError,
    TimeoutException,
    encode_response,
)
from eas_client._httpx import AsyncHttpxTransport, HttpsPools, HttpxTransport
from eas_client._instances import AsyncInstances, Instances
from eas_client._transport import AsyncTransport, Reply, Request, Transport
from eas_client._wire import AsyncPool, BadAnswer, SyncPool
from tests.eas_client.loopback import OK, Handler, Server

Serve = Callable[[Handler], Server]
PATH = "/v2/models/m/infer"
# the wire pools of the default transport (an http instance), and the httpx adapter (what an https
# instance or an injected transport gets), each sync and async
KINDS = ["wire", "wire-async", "httpx", "httpx-async"]


def request(origin: str, timeout: float = 5.0) -> Request:
    headers = {"content-type": "application/json"}
    return Request(
        origin + PATH, origin, b"{}", headers, timeout=timeout, connect=1.0, pool=timeout
    )


def exchange(kind: str, req: Request) -> Reply:
    """Send ``req`` through a new transport of ``kind``, closed afterwards."""
    if kind.endswith("-async"):
        return asyncio.run(_exchange(kind, req))
    transport: Transport = Instances(4) if kind == "wire" else HttpsPools(4).sync()
    try:
        return transport.send(req)
    finally:
        transport.close()


async def _exchange(kind: str, req: Request) -> Reply:
    transport: AsyncTransport = (
        AsyncInstances(4) if kind == "wire-async" else HttpsPools(4).asynchronous()
    )
    try:
        return await transport.send(req)
    finally:
        await transport.aclose()


def cause(kind: str, wire: type[BaseException], httpx_: type[BaseException]) -> type:
    return wire if kind.startswith("wire") else httpx_


def refused_origin(scheme: str = "http") -> str:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # closed again at once: nothing listens there
    return f"{scheme}://127.0.0.1:{port}"


# ------------------------------------------------------------------------------- adapters


@pytest.mark.parametrize("kind", KINDS)
def test_every_adapter_gives_one_reply_type(serve: Serve, kind: str) -> None:
    def handler(conn: socket.socket, _: int) -> None:
        if server.read_request(conn):
            conn.sendall(
                b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n"
                b'Retry-After: 1\r\n\r\n5\r\n{"err\r\n9\r\nor": "x"}\r\n0\r\n\r\n'
            )

    server = serve(handler)
    reply = exchange(kind, request(server.url))
    assert type(reply) is Reply
    assert reply.status_code == 503
    assert reply.headers.get("retry-after") == "1"  # looked up by lower-case name
    assert reply.content == b'{"error": "x"}'


@pytest.mark.parametrize("kind", KINDS)
def test_a_refused_port_is_a_connect_error(kind: str) -> None:
    req = request(refused_origin())
    with pytest.raises(ConnectError, match="failed or was dropped") as caught:
        exchange(kind, req)
    assert caught.value.url == req.url
    assert isinstance(
        caught.value.__cause__, cause(kind, ConnectionRefusedError, httpx.ConnectError)
    )


@pytest.mark.parametrize("kind", KINDS)
def test_a_server_that_closes_mid_answer_is_a_connect_error(serve: Serve, kind: str) -> None:
    def handler(conn: socket.socket, _: int) -> None:
        if server.read_request(conn):
            conn.sendall(OK[:-1])
        conn.close()

    server = serve(handler)
    with pytest.raises(ConnectError) as caught:
        exchange(kind, request(server.url))
    assert isinstance(caught.value.__cause__, cause(kind, BadAnswer, httpx.RemoteProtocolError))
    assert server.requests == 1  # not sent again: the server may have seen it


@pytest.mark.parametrize("kind", KINDS)
def test_a_malformed_answer_is_a_connect_error(serve: Serve, kind: str) -> None:
    def handler(conn: socket.socket, _: int) -> None:
        if server.read_request(conn):
            conn.sendall(b"HTTP/9 banana\r\n\r\n")
        conn.close()

    server = serve(handler)
    with pytest.raises(ConnectError) as caught:
        exchange(kind, request(server.url))
    assert isinstance(caught.value.__cause__, cause(kind, BadAnswer, httpx.RemoteProtocolError))


@pytest.mark.parametrize("kind", KINDS)
def test_a_silent_server_is_a_timeout(serve: Serve, kind: str) -> None:
    def handler(conn: socket.socket, _: int) -> None:
        server.read_request(conn)
        server.released.wait(30)  # silent until the test is over, however slow the client is

    server = serve(handler)
    req = request(server.url, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(TimeoutException, match="in time") as caught:
        exchange(kind, req)
    assert 0.25 < time.monotonic() - started < 2.0
    assert caught.value.url == req.url
    assert isinstance(caught.value.__cause__, cause(kind, TimeoutError, httpx.ReadTimeout))


@pytest.mark.parametrize("kind", ["httpx", "httpx-async"])
def test_an_answer_httpx_cannot_decode_is_a_protocol_error(serve: Serve, kind: str) -> None:
    body = b"{}"  # not gzip

    def handler(conn: socket.socket, _: int) -> None:
        if server.read_request(conn):
            head = f"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: {len(body)}"
            conn.sendall(head.encode() + b"\r\n\r\n" + body)

    server = serve(handler)
    with pytest.raises(ProtocolError, match="could not be decoded") as caught:
        exchange(kind, request(server.url))
    assert isinstance(caught.value.__cause__, httpx.DecodingError)


@pytest.mark.parametrize("asynchronous", [False, True])
def test_the_default_transport_sends_https_instances_through_httpx(asynchronous: bool) -> None:
    req = request(refused_origin("https"))
    with pytest.raises(ConnectError) as caught:
        exchange("wire-async" if asynchronous else "wire", req)
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


def test_the_default_transport_keeps_one_pool_per_instance(serve: Serve) -> None:
    def handler(conn: socket.socket, _: int) -> None:
        while server.read_request(conn):
            conn.sendall(OK)

    server = serve(handler)
    other = refused_origin("https")
    transport = Instances(2)
    try:
        for _ in range(3):
            assert transport.send(request(server.url)).status_code == 200
        with pytest.raises(ConnectError):
            transport.send(request(other))
        assert transport.origins() == [server.url, other]
        assert isinstance(transport._pools.get(server.url), SyncPool)
        assert isinstance(transport._pools.get(other), HttpxTransport)
        transport.discard(server.url)
        assert transport.origins() == [other]
    finally:
        transport.close()
    assert server.accepted == 1 and transport.origins() == []

    async def main() -> None:
        pools = AsyncInstances(2)
        try:
            assert (await pools.send(request(server.url))).status_code == 200
            assert isinstance(pools._pools.get(server.url), AsyncPool)
            with pytest.raises(ConnectError):
                await pools.send(request(other))
            assert isinstance(pools._pools.get(other), AsyncHttpxTransport)
        finally:
            await pools.aclose()

    asyncio.run(main())


# ------------------------------------------------------------------------------- clients

X = np.arange(8, dtype=np.float32).reshape(2, 4)


def _answer() -> bytes:
    body, length = encode_response(
        model_name="m", model_version=None, request_id=None, outputs=[("y", X)], binary=True
    )
    head = f"HTTP/1.1 200 OK\r\ninference-header-content-length: {length}\r\n"
    return f"{head}content-length: {len(body)}\r\n\r\n".encode() + body


ANSWER = _answer()


def infer_all(asynchronous: bool, injected: bool, urls: list[str], calls: int) -> None:
    """``calls`` calls through a client over the default transport or an injected httpx one."""
    options: dict[str, Any] = {"urls": urls, "model": "m", "eject_after": 1000}
    if not asynchronous:
        transport = httpx.HTTPTransport() if injected else None
        with EasClient(transport=transport, **options) as client:
            for _ in range(calls):
                np.testing.assert_array_equal(client.infer({"x": X})["y"], X)
        return

    async def main() -> None:
        transport = httpx.AsyncHTTPTransport() if injected else None
        async with AsyncEasClient(transport=transport, **options) as client:
            for _ in range(calls):
                np.testing.assert_array_equal((await client.infer({"x": X}))["y"], X)

    asyncio.run(main())


CLIENTS = pytest.mark.parametrize(
    ("asynchronous", "injected"),
    [(False, False), (True, False), (False, True), (True, True)],
    ids=["sync-wire", "async-wire", "sync-httpx", "async-httpx"],
)


@CLIENTS
def test_a_dropped_answer_is_retried_on_another_instance(
    serve: Serve, asynchronous: bool, injected: bool
) -> None:
    def dropping(conn: socket.socket, _: int) -> None:
        if bad.read_request(conn):
            conn.sendall(ANSWER[:-5])

    def answering(conn: socket.socket, _: int) -> None:
        while good.read_request(conn):
            conn.sendall(ANSWER)

    bad, good = serve(dropping), serve(answering)
    infer_all(asynchronous, injected, [bad.url, good.url], 20)
    assert bad.requests > 0 and good.requests == 20


@CLIENTS
def test_a_refused_connection_ends_as_no_instance_available(
    asynchronous: bool, injected: bool
) -> None:
    origin = refused_origin()
    with pytest.raises(NoInstanceAvailable) as caught:
        infer_all(asynchronous, injected, [origin], 1)
    connect = caught.value.__cause__
    assert isinstance(connect, ConnectError) and connect.url == origin + PATH
    refused = httpx.ConnectError if injected else ConnectionRefusedError
    assert isinstance(connect.__cause__, refused)
