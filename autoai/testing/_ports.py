"""A free loopback port, for a process that must be given its port number up front.

A server this process starts in-process binds ``127.0.0.1:0`` on a socket it keeps (no
close-then-rebind race); ``free_port`` is for another process that needs a number on its command
line or in a config file (``autoai up --port``, ZooKeeper's ``clientPort``). The number may be taken
between this call and that process's bind: callers that can, retry on a clash.
"""

from __future__ import annotations

import socket

__all__ = ["free_port", "port_free"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port of ``host`` that nothing listened on a moment ago."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``port`` of ``host`` can be bound now, as uvicorn binds it (``SO_REUSEADDR``: a
    port in ``TIME_WAIT`` counts as free)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
