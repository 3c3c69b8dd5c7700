"""The loopback rule both servers bind by (eas_server._network): pure, nothing resolved."""

from __future__ import annotations

import pytest

from eas_server import is_loopback


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.1.2.3",
        "127.255.255.254",
        "::1",
        "[::1]",
        "0:0:0:0:0:0:0:1",
        "::ffff:127.0.0.1",  # IPv4-mapped loopback on an IPv6 socket
        "localhost",
        "LocalHost",
        "localhost.",
    ],
)
def test_loopback(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host",
    [
        "0.0.0.0",
        "::",
        "[::]",
        "",  # the empty host binds every interface
        "10.0.0.1",
        "192.168.1.20",
        "128.0.0.1",
        "::ffff:10.0.0.1",
        "fe80::1%eth0",
        "127.1",  # the OS would expand it to 127.0.0.1; we expand nothing, so it is beyond
        "example.com",
        "my-host",
        "localhost.example.com",
        "notlocalhost",
    ],
)
def test_beyond_loopback(host: str) -> None:
    assert not is_loopback(host)
