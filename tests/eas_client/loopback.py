"""A loopback HTTP server scripted per connection, for the transports' tests (real sockets)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

__all__ = ["OK", "Handler", "Server"]

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"

Handler = Callable[[socket.socket, int], None]


class Server:
    """A loopback server running ``handler(connection, index)`` per accepted connection."""

    def __init__(self, handler: Handler):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.handler = handler
        self.accepted = 0
        self.requests = 0
        self.released = threading.Event()
        """Set by ``close``: handlers that hang on purpose wait for it, not for a guessed time."""
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._handle, args=(conn, self.accepted), daemon=True).start()

    def _handle(self, conn: socket.socket, index: int) -> None:
        # closed here whatever the handler did: a socket left to the garbage collector warns
        # (ResourceWarning, an error here) in whichever test happens to be running then
        with conn:
            self.handler(conn, index)

    def read_request(self, conn: socket.socket) -> bool:
        """Read one request (head + content-length body); False at EOF."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return False
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        while len(body) < length:
            body += conn.recv(65536)
        self.requests += 1
        return True

    def close(self) -> None:
        self.released.set()
        self.sock.close()
