"""The HTTP face of an instance hosting many model versions: the instance's own routes (health,
server metadata, /metrics, statistics of every model, Triton's repository extension and
``/v2/resources``), and every model route handed whole to that model's app.

A model's app checks the token, the address and the request again, as it does when it serves
alone, so a hosted model answers exactly what a single-model server answers: ``/infer``, and for
a generative (seq2seq) model ``/generate`` and ``/generate_stream`` too.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .._app import (
    EasApp,
    Receive,
    Scope,
    Send,
    check_token,
    lifespan,
    respond,
    respond_error,
    status_of,
)
from .._build import server_version
from .._errors import EasServerError, InvalidInput, ModelNotFound, PayloadTooLarge
from .._resources import gpu_memory, host_memory, rss_bytes
from ._host import LoadFailed, ModelHost

__all__ = ["RepositoryApp"]

log = logging.getLogger("eas_server.repository")

_JSON = b"application/json"
_MAX_CONTROL_BODY = 1 << 20
"""Largest body of a repository call (a service JSON)."""
_COUNTED = frozenset({"infer", "generate", "generate_stream"})
"""Model routes whose failures count on the model addressed (as its own app counts them)."""


class RepositoryApp:
    """ASGI application of a multi-model instance.

    Args:
        host: the hosted model versions.
        token: required on every route but health and /metrics (as on a single-model server).
    """

    def __init__(self, host: ModelHost, *, token: str | None = None):
        self.host = host
        self.ready = False
        self.last_request = time.monotonic()
        self._token = token.encode() if token else None
        self._server = {
            "name": "eas-server",
            "version": server_version(),
            "extensions": [
                "binary_tensor_data",
                "model_configuration",
                "statistics",
                "schedule_policy",
                "model_repository",
            ],
        }

    # ------------------------------------------------------- the catalog (gRPC reads it too)

    def find(self, name: str, version: str | None) -> EasApp:
        return self.host.find(name, version)

    def apps(self) -> list[EasApp]:
        return self.host.apps()

    def server_document(self) -> dict[str, Any]:
        return dict(self._server)

    def record_failure(self, name: str, outcome: str, total_s: float) -> None:
        """A failed infer call addressed to ``name``: counted on that model when it is hosted."""
        for app in self.host.apps():
            if app.model.name == name:
                app.on_failure(outcome, total_s)
                return

    def authorize(self, value: bytes | None) -> None:
        """As ``OipApp.authorize``: the instance's token, bare or as a Bearer token."""
        check_token(self._token, value)

    @property
    def busy(self) -> bool:
        return self.host.busy

    # ---------------------------------------------------------------------------------- ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        self.last_request = time.monotonic()
        path: str = scope["path"]
        parts = path.strip("/").split("/")
        try:
            if parts[:2] == ["v2", "models"] and len(parts) >= 3 and parts[2] != "stats":
                version = parts[4] if len(parts) >= 5 and parts[3] == "versions" else None
                try:
                    app = self.host.find(parts[2], version)
                except EasServerError:
                    if parts[-1] == "ready" and scope["method"] == "GET":  # not ready: 503
                        self._check_token(scope)
                        await respond(send, 503, b"")
                        return
                    raise
                await app(scope, receive, send)
                return
            await self._route(scope, receive, send, parts)
        except EasServerError as exc:
            status, _ = status_of(exc)
            if parts[-1] in _COUNTED and len(parts) >= 3:
                self.record_failure(parts[2], "not_found" if status == 404 else "unavailable",
                                    0.0)  # fmt: skip
            await respond_error(send, status, str(exc), exc)
        except Exception as exc:
            log.exception("unexpected error on %s %s", scope["method"], path)
            await respond_error(send, 500, f"internal error: {type(exc).__name__}: {exc}", None)

    def _check_token(self, scope: Scope) -> None:
        if self._token is not None:
            self.authorize(next((v for k, v in scope["headers"] if k == b"authorization"), None))

    async def _route(self, scope: Scope, receive: Receive, send: Send, parts: list[str]) -> None:
        method: str = scope["method"]
        path: str = scope["path"]
        if parts == ["metrics"] and method == "GET":
            await respond(send, 200, generate_latest(self.host.registry),
                          [(b"content-type", CONTENT_TYPE_LATEST.encode())])  # fmt: skip
            return
        if parts[:2] == ["v2", "health"] and len(parts) == 3 and method == "GET":
            if parts[2] not in ("live", "ready"):
                raise ModelNotFound(f"no route {method} {path}")
            ok = parts[2] == "live" or self.ready
            await respond(send, 200 if ok else 503, b"")
            return
        if parts[:1] != ["v2"]:
            raise ModelNotFound(f"no route {method} {path}")
        self._check_token(scope)
        rest = parts[1:]
        if not rest and method == "GET":
            await respond(send, 200, orjson.dumps(self._server))
        elif rest == ["models", "stats"] and method == "GET":
            stats = [
                app.metrics.statistics(app.model.name, app.model.version) for app in self.apps()
            ]
            await respond(send, 200, orjson.dumps({"model_stats": stats}))
        elif rest == ["resources"] and method == "GET":
            await respond(send, 200, orjson.dumps(self.resources()))
        elif rest == ["repository", "index"] and method == "POST":
            body = await self._json_body(receive)
            ready = body.get("ready", False)
            if not isinstance(ready, bool):
                raise InvalidInput(f"'ready' must be true or false, got {ready!r}")
            await respond(send, 200, orjson.dumps(self.host.index(ready)))
        elif len(rest) == 4 and rest[:2] == ["repository", "models"] and method == "POST":
            await self._repository_call(rest[2], rest[3], await self._json_body(receive), send)
        else:
            raise ModelNotFound(f"no route {method} {path}")

    async def _repository_call(
        self, name: str, action: str, body: dict[str, Any], send: Send
    ) -> None:
        parameters = body.get("parameters", {})
        if not isinstance(parameters, dict):
            raise InvalidInput("'parameters' must be an object")
        if action == "load":
            config = parameters.get("config")
            if config is not None and not isinstance(config, str):
                raise InvalidInput(
                    "parameters.config must be a string holding the service JSON, "
                    f"got {type(config).__name__}"
                )
            try:
                await self.host.load(name, config)
            except LoadFailed as exc:
                await respond_error(send, 400, str(exc), None)
                return
        elif action == "unload":
            version = parameters.get("version")
            if version is not None and not isinstance(version, (str, int)):
                raise InvalidInput(f"parameters.version must be a string, got {version!r}")
            await self.host.unload(name, None if version is None else str(version))
        else:
            raise ModelNotFound(f"no route POST /v2/repository/models/{name}/{action}")
        await respond(send, 200, b"{}")

    async def _json_body(self, receive: Receive) -> dict[str, Any]:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return {}
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > _MAX_CONTROL_BODY:
                raise PayloadTooLarge(f"body is over the limit of {_MAX_CONTROL_BODY} bytes")
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        raw = b"".join(chunks).strip()
        if not raw:
            return {}
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"body is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise InvalidInput("body must be a JSON object")
        return doc

    def resources(self) -> dict[str, Any]:
        """``GET /v2/resources``: what placement reads."""
        total, available = host_memory()
        return {
            "rss_bytes": rss_bytes(),
            "memory_total_bytes": total,
            "memory_available_bytes": available,
            "gpus": gpu_memory(),
            "models": [
                {
                    "name": h.name,
                    "version": h.version,
                    "state": str(h.state),
                    "processor": h.settings.processor if h.settings else None,
                    "memory_bytes": h.memory_bytes,
                    "gpu_memory_bytes": h.gpu_memory_bytes,
                    "queue_depth": h.app.batcher.queue_depth if h.app else 0,
                    "inference_count": h.app.metrics.inference_count if h.app else 0,
                }
                for h in self.host.hosted()
            ],
        }
