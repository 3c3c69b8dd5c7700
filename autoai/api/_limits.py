"""One cap on every request body, before any of it is buffered: 413 past the limit.

A model upload (multipart ``POST /api/v1/models``) may be as large as a model plus its framing;
every other body (a JSON registration by URI, a deploy spec, a route table) is at most 1 MiB. A
``Content-Length`` over the cap is answered at once, without reading; a chunked body is refused
as soon as the bytes received pass it, so a client cannot make the control plane buffer more.
"""

from __future__ import annotations

import json
from typing import Final

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..repository import MAX_MODEL_BYTES

__all__ = ["MAX_JSON_BYTES", "MAX_UPLOAD_BYTES", "BodyLimit", "body_limit"]

MAX_UPLOAD_BYTES: Final = MAX_MODEL_BYTES + (1 << 20)
"""A multipart registration: the model plus its framing."""
MAX_JSON_BYTES: Final = 1 << 20
"""Every other body."""
UPLOAD_PATH: Final = "/api/v1/models"


def body_limit(method: str, path: str, content_type: str) -> int:
    """The largest body this request may have, in bytes."""
    upload = method == "POST" and path.rstrip("/") == UPLOAD_PATH
    if upload and content_type.startswith("multipart/form-data"):
        return MAX_UPLOAD_BYTES
    return MAX_JSON_BYTES


def _too_large(limit: int) -> str:
    return f"the request body is larger than {limit} bytes"


class BodyLimit:
    """ASGI middleware applying ``body_limit`` to every HTTP request."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        kind = headers.get(b"content-type", b"").decode("latin-1")
        limit = body_limit(scope["method"], scope["path"], kind)
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and (len(declared) > 18 or int(declared) > limit):
            await self._refuse(send, limit)
            return
        seen = 0

        async def capped() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                # an HTTPException passes FastAPI's body parsing unchanged (any other error
                # there becomes a 400) and is answered by the app's handler in the same shape
                raise HTTPException(413, _too_large(limit))
            return message

        await self.app(scope, capped, send)

    @staticmethod
    async def _refuse(send: Send, limit: int) -> None:
        body = json.dumps({"error": _too_large(limit), "detail": {"limit": limit}}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
