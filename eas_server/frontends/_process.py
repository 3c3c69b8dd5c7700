"""A front end process: ``python -m eas_server.frontends --fd N --host H --port P``.

Started by the executor (``FrontendHub``) with one end of a socket pair as ``--fd``. It waits for
the executor's HELLO (the model, its documents, the token), binds ``HOST:PORT`` with
``SO_REUSEPORT`` next to its sibling front ends (the kernel spreads connections over them),
serves OIP over HTTP with uvicorn, and says LISTENING. It never loads the model.

Signals are the executor's business: SIGTERM and SIGINT are ignored here, and the executor sends
STOP when it has drained (uvicorn then finishes the requests in flight and exits). When the
executor goes away without a STOP (it crashed or was killed), every request in flight and every
new one gets 503, the listener closes, and the process exits with status 1 within a second:
no front end outlives its executor.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from types import FrameType

import uvicorn

from .._http import uvicorn_config
from ._remote import ExecutorLink, FrontendApp, model_from_json

__all__ = ["main"]

log = logging.getLogger("eas_server.frontends")


def reuseport_socket(host: str, port: int, *, listen: bool) -> socket.socket:
    """A TCP socket bound to ``host:port`` with ``SO_REUSEPORT`` (listening when ``listen``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(2048)
    return sock


class _Server(uvicorn.Server):
    """uvicorn that leaves signals to the executor."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        log.debug("front end %d: ignoring signal %d (the executor decides)", os.getpid(), sig)


async def _serve(fd: int, host: str, port: int, log_level: str) -> int:
    loop = asyncio.get_running_loop()
    link = ExecutorLink()
    await loop.connect_accepted_socket(lambda: link, socket.socket(fileno=fd))
    try:
        hello = await asyncio.wait_for(link.hello, 120)
    except (TimeoutError, Exception) as exc:
        print(f"eas-server front end: no word from the executor: {exc}", file=sys.stderr)
        return 1
    options = dict(hello["options"])
    options["model"] = model_from_json(hello["model"])
    app = FrontendApp(link, **options)
    sock = reuseport_socket(host, port, listen=True)
    config = uvicorn_config(app, log_level=log_level, drain_timeout_s=hello["drain_timeout_s"])
    server = _Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if serving.done():
            serving.result()
            return 1
        await asyncio.sleep(0.005)
    app.ready = bool(hello["ready"])
    link.listening(os.getpid())
    stop = asyncio.create_task(link.stopped.wait())
    lost = asyncio.create_task(link.lost.wait())
    await asyncio.wait([stop, lost, serving], return_when=asyncio.FIRST_COMPLETED)
    crashed = not link.stopped.is_set()
    if crashed:
        log.error("front end %d: the executor is gone; closing", os.getpid())
        server.force_exit = True  # 503 has been sent to whatever was waiting: do not linger
    server.should_exit = True
    await serving
    stop.cancel()
    lost.cancel()
    return 1 if crashed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eas_server.frontends")
    parser.add_argument("--fd", type=int, required=True, help="socket to the executor")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        import uvloop

        return uvloop.run(_serve(args.fd, args.host, args.port, args.log_level))
    except ImportError:  # pragma: no cover - uvloop is in the server extra
        return asyncio.run(_serve(args.fd, args.host, args.port, args.log_level))
