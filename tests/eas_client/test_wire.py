"""The wire pools (``eas_client._wire``) against real sockets: keep-alive reuse, a connection the
server closed while idle, answers cut short or malformed, chunked bodies, deadlines and the pool
bound. Their conversion into our errors is in ``test_transports.py``."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable

import pytest

from eas_client._wire import AsyncPool, BadAnswer, PoolTimeout, SyncPool, request_head
from tests.eas_client.loopback import OK, Handler, Server

HEAD = request_head("POST", "/v2/models/m/infer", "127.0.0.1", {"content-type": "x"})


def _deadline(seconds: float = 2.0) -> float:
    return time.monotonic() + seconds


def test_keep_alive_connections_are_reused(serve: Callable[[Handler], Server]) -> None:
    def handler(conn: socket.socket, _: int) -> None:
        while server.read_request(conn):
            conn.sendall(OK)

    server = serve(handler)
    pool = SyncPool("127.0.0.1", server.port, 4)
    for _ in range(5):
        reply = pool.request(HEAD, {}, b"{}", _deadline(), 1.0)
        assert (reply.status_code, reply.content) == (200, b"{}")
        assert reply.headers["content-type"] == "application/json"
    assert server.accepted == 1
    pool.close()


def test_a_connection_closed_while_idle_is_replaced_transparently(
    serve: Callable[[Handler], Server],
) -> None:
    def handler(conn: socket.socket, _: int) -> None:
        if server.read_request(conn):
            conn.sendall(OK)
        conn.close()  # like uvicorn's keep-alive timeout, without saying so in the answer

    server = serve(handler)
    pool = SyncPool("127.0.0.1", server.port, 4)
    for _ in range(3):
        assert pool.request(HEAD, {}, b"{}", _deadline(), 1.0).status_code == 200
    pool.close()
    assert server.accepted == 3


def test_an_answer_cut_short_is_an_error_not_a_resend(
    serve: Callable[[Handler], Server],
) -> None:
    def handler(conn: socket.socket, _: int) -> None:
        if server.read_request(conn):
            conn.sendall(OK[:-1])
        conn.close()

    server = serve(handler)
    pool = SyncPool("127.0.0.1", server.port, 4)
    with pytest.raises(BadAnswer, match="in the middle of its answer"):
        pool.request(HEAD, {}, b"{}", _deadline(), 1.0)
    assert server.requests == 1


def test_a_malformed_answer_is_refused(serve: Callable[[Handler], Server]) -> None:
    def handler(conn: socket.socket, _: int) -> None:
        if server.read_request(conn):
            conn.sendall(b"HTTP/9 banana\r\n\r\n")
        conn.close()

    server = serve(handler)
    with pytest.raises(BadAnswer, match="malformed HTTP answer"):
        SyncPool("127.0.0.1", server.port, 1).request(HEAD, {}, b"{}", _deadline(), 1.0)


def test_chunked_answers_are_read_whole(serve: Callable[[Handler], Server]) -> None:
    def handler(conn: socket.socket, _: int) -> None:
        if server.read_request(conn):
            conn.sendall(
                b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n"
                b'retry-after: 1\r\n\r\n5\r\n{"err\r\n9\r\nor": "x"}\r\n0\r\n\r\n'
            )

    server = serve(handler)
    pool = SyncPool("127.0.0.1", server.port, 1)
    reply = pool.request(HEAD, {}, b"{}", _deadline(), 1.0)
    pool.close()
    assert reply.status_code == 503
    assert reply.headers["retry-after"] == "1"
    assert reply.content == b'{"error": "x"}'


def test_a_silent_server_times_out_at_the_deadline(serve: Callable[[Handler], Server]) -> None:
    def handler(conn: socket.socket, _: int) -> None:
        server.read_request(conn)
        server.released.wait(30)  # silent until the test is over, however slow the client is
        conn.close()

    server = serve(handler)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        SyncPool("127.0.0.1", server.port, 1).request(HEAD, {}, b"{}", _deadline(0.3), 1.0)
    assert 0.25 < time.monotonic() - started < 1.5


def test_a_refused_connection_is_an_os_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # closed again at once: nothing listens there
    with pytest.raises(ConnectionRefusedError):
        SyncPool("127.0.0.1", port, 1).request(HEAD, {}, b"{}", _deadline(), 1.0)


def test_the_pool_bounds_concurrent_connections(serve: Callable[[Handler], Server]) -> None:
    answer = threading.Event()

    def handler(conn: socket.socket, _: int) -> None:
        while server.read_request(conn):
            answer.wait(30)  # the only connection stays busy until the second request gave up
            conn.sendall(OK)

    server = serve(handler)
    pool = SyncPool("127.0.0.1", server.port, 1)
    first = threading.Thread(target=pool.request, args=(HEAD, {}, b"{}", _deadline(60), 1.0))
    first.start()
    deadline = _deadline(30)
    while server.requests < 1:  # the first request holds the connection
        assert time.monotonic() < deadline, "the first request never arrived"
        time.sleep(0.01)
    try:
        with pytest.raises(PoolTimeout, match="no free connection"):
            pool.request(HEAD, {}, b"{}", _deadline(0.2), 1.0)
    finally:
        answer.set()
    first.join()
    assert server.accepted == 1
    pool.close()


def test_async_pool_reuses_replaces_and_times_out(serve: Callable[[Handler], Server]) -> None:
    def handler(conn: socket.socket, index: int) -> None:
        while server.read_request(conn):
            if server.requests == 4:
                server.released.wait(30)  # the fourth request gets no answer in time
                return
            conn.sendall(OK)
            if index == 1 and server.requests == 2:
                conn.close()  # the first connection dies while idle after two answers
                return

    server = serve(handler)

    async def main() -> None:
        pool = AsyncPool("127.0.0.1", server.port, 4)
        for _ in range(3):
            reply = await pool.request(HEAD, {}, b"{}", _deadline(), 1.0)
            assert reply.status_code == 200
        with pytest.raises(TimeoutError):
            await pool.request(HEAD, {}, b"{}", _deadline(0.3), 1.0)
        pool.close()

    asyncio.run(main())
    assert server.accepted >= 2
