"""Fixtures of the eas_client tests: scripted loopback servers (``loopback.Server``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.eas_client.loopback import Handler, Server


@pytest.fixture
def serve() -> Iterator[Callable[[Handler], Server]]:
    """Start a loopback server per call, running the given handler; all closed after the test."""
    servers: list[Server] = []

    def start(handler: Handler) -> Server:
        servers.append(Server(handler))
        return servers[-1]

    yield start
    for server in servers:
        server.close()
