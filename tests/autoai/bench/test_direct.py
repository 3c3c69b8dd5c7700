"""The lean sender of ``--url`` against a live eas-server, a port nobody listens on, and a peer
that accepts connections and never answers."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from autoai.bench import BadInput, error_kind
from autoai.bench._direct import DirectTarget, base_url
from eas_client import ConnectError, InvalidRequest, TimeoutException
from tests.fixtures import onnx_models
from tests.fixtures.servers import StartServer

X = {"x": np.ones((2, 4), np.float32)}


def test_calls_and_refusals_of_a_live_server(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server(onnx_models.tagged(tmp_path, 2.0), name="tagger")

    async def main() -> None:
        target = DirectTarget(server.url, "tagger", None, X)
        outputs = await target.probe()
        assert np.array_equal(outputs["y"], X["x"] + 2)
        await asyncio.gather(*(target.send() for _ in range(20)))
        assert len(target._all) <= 20 and target._idle  # connections are kept and reused
        await target.send()
        await target.aclose()

        wrong = DirectTarget(server.url, "tagger", None, {"x": np.ones((2, 4), np.int64)})
        with pytest.raises(BadInput, match="HTTP 400"):
            await wrong.probe()
        with pytest.raises(InvalidRequest) as refused:
            await wrong.send()
        assert error_kind(refused.value) == "HTTP 400"
        await wrong.aclose()

    asyncio.run(main())


def test_a_port_nobody_listens_on_is_a_connect_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused

        async def main() -> None:
            target = DirectTarget(f"http://127.0.0.1:{port}", "m", None, X)
            with pytest.raises(ConnectError):
                await target.send()
            await target.aclose()

        asyncio.run(main())


def test_a_peer_that_never_answers_times_out() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()  # the kernel accepts; nobody reads or answers

        async def main() -> float:
            target = DirectTarget(
                f"http://127.0.0.1:{s.getsockname()[1]}", "m", None, X, timeout=0.4
            )
            started = time.monotonic()
            with pytest.raises(TimeoutException) as late:
                await target.send()
            assert error_kind(late.value) == "timeout"
            await target.aclose()
            return time.monotonic() - started

        assert 0.4 <= asyncio.run(main()) < 2.0


@pytest.mark.parametrize("url", ["https://h:1", "http://h", "http://h:1/v2", "h:1", "http://:1"])
def test_only_http_host_port_urls(url: str) -> None:
    with pytest.raises(BadInput, match="HOST:PORT"):
        base_url(url)
    assert base_url("http://127.0.0.1:8000/") == ("http://127.0.0.1:8000", "127.0.0.1", 8000)
