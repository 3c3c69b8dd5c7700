"""The ``inference.GRPCInferenceService`` servicer: KServe v2 gRPC in front of an ``EasApp``.

Every RPC goes where the HTTP route of the same meaning goes: the app's token check (gRPC
metadata ``authorization: Bearer <token>`` or the bare token), its model, its readiness flag,
``plan_request``, its batcher and its metrics (``ModelInfer`` counts outcomes with HTTP's labels).
``ServerLive`` and ``ServerReady`` are open, as ``/v2/health/*`` are. Errors become status codes
through ``_CODES`` and nowhere else, with the text HTTP puts in its ``{"error": ...}`` bodies. The
RPCs not implemented here (repository, shared memory, trace, log settings, streaming) answer
UNIMPLEMENTED.

Handlers are coroutines run on the event loop of the HTTP server and of the batcher.
"""

from __future__ import annotations

import functools
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from eas_client import ProtocolError

from .._app import EasApp
from .._errors import (
    EasServerError,
    InvalidInput,
    ModelNotFound,
    PayloadTooLarge,
    ProcessorError,
    QueueFull,
    QueueTimeout,
    Unauthorized,
    Unavailable,
)
from .._model import plan_request
from ._convert import decode_infer_request, encode_infer_response
from ._documents import (
    model_config_response,
    model_metadata_response,
    server_metadata_response,
    statistics_response,
)
from ._proto import grpc, service_pb2

__all__ = ["CODES", "InferenceServicer"]

log = logging.getLogger("eas_server.grpc")

_Code = grpc.StatusCode
# (error class, gRPC status, outcome label as in _app._STATUS); the first match wins.
CODES: tuple[tuple[type[EasServerError], Any, str], ...] = (
    (InvalidInput, _Code.INVALID_ARGUMENT, "bad_request"),
    (ModelNotFound, _Code.NOT_FOUND, "not_found"),
    (Unauthorized, _Code.UNAUTHENTICATED, "unauthorized"),
    (PayloadTooLarge, _Code.RESOURCE_EXHAUSTED, "too_large"),
    (QueueFull, _Code.UNAVAILABLE, "queue_full"),
    (QueueTimeout, _Code.UNAVAILABLE, "timeout"),
    (Unavailable, _Code.UNAVAILABLE, "unavailable"),  # ShuttingDown too
    (ProcessorError, _Code.INTERNAL, "error"),
    (EasServerError, _Code.INTERNAL, "error"),
)

_Handler = Callable[["InferenceServicer", Any, Any], Awaitable[Any]]


def _code_of(exc: EasServerError) -> tuple[Any, str]:
    return next((code, outcome) for cls, code, outcome in CODES if isinstance(exc, cls))


def _authorization(context: Any) -> bytes | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value.encode() if isinstance(value, str) else bytes(value)
    return None


class Catalog(Protocol):
    """What the servicer serves: one model's ``EasApp``, or a ``RepositoryApp`` of many."""

    ready: bool
    last_request: float

    def authorize(self, value: bytes | None) -> None: ...

    def find(self, name: str, version: str | None) -> EasApp: ...

    def apps(self) -> list[EasApp]: ...

    def server_document(self) -> dict[str, Any]: ...

    def record_failure(self, name: str, outcome: str, total_s: float) -> None: ...


def _rpc(*, open_: bool = False, counted: bool = False) -> Callable[[_Handler], _Handler]:
    """Wrap an RPC: token check (unless ``open_``), errors to status codes, and for ``counted``
    ones (inference) a failure outcome in the metrics of the model addressed."""

    def wrap(method: _Handler) -> _Handler:
        @functools.wraps(method)
        async def handler(self: InferenceServicer, request: Any, context: Any) -> Any:
            started = time.perf_counter()
            self.app.last_request = time.monotonic()
            try:
                if not open_:
                    self.app.authorize(_authorization(context))
                return await method(self, request, context)
            except EasServerError as exc:
                (code, outcome), message = _code_of(exc), str(exc)
            except Exception as exc:
                log.exception("unexpected error in %s", method.__name__)
                code, outcome = _Code.INTERNAL, "error"
                message = f"internal error: {type(exc).__name__}: {exc}"
            if counted:
                self.app.record_failure(
                    getattr(request, "model_name", ""), outcome, time.perf_counter() - started
                )
            return await context.abort(code, message)  # raises; grpc sends the status

        return handler

    return wrap


@dataclass(frozen=True)
class _Hosted:
    """One served model version and its prebuilt messages."""

    app: EasApp
    metadata: Any
    config: Any


class InferenceServicer:
    """``GRPCInferenceService`` for the model(s) of ``app``.

    Args:
        app: the HTTP app (one model's, or a repository's) whose models, batchers, metrics,
            token and readiness are shared.
    """

    def __init__(self, app: Catalog):
        self.app = app
        self._server = server_metadata_response(app.server_document())
        self._messages: weakref.WeakKeyDictionary[EasApp, tuple[Any, Any]] = (
            weakref.WeakKeyDictionary()
        )

    def _hosted(self, app: EasApp) -> _Hosted:
        """A model's prebuilt messages (built on first use; gone with the app when unloaded)."""
        messages = self._messages.get(app)
        if messages is None:
            _, metadata, config = app.documents()
            messages = model_metadata_response(metadata), model_config_response(config)
            self._messages[app] = messages
        return _Hosted(app, *messages)

    def _lookup(self, name: str, version: str) -> _Hosted:
        """The one model lookup; ``version`` ``""`` means any.

        Raises:
            ModelNotFound: no such model or version here.
            Unavailable: it is loading or being unloaded.
        """
        return self._hosted(self.app.find(name, version or None))

    def __getattr__(self, name: str) -> Any:
        """RPCs not implemented here (the generated registration asks for all of them)."""
        if not name[:1].isupper():
            raise AttributeError(name)

        async def unimplemented(request: Any, context: Any) -> None:
            await context.abort(_Code.UNIMPLEMENTED, f"{name} is not supported by eas-server")

        return unimplemented

    @_rpc(open_=True)
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    @_rpc(open_=True)
    async def ServerReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerReadyResponse(ready=self.app.ready)

    @_rpc()
    async def ModelReady(self, request: Any, context: Any) -> Any:
        try:
            hosted = self._lookup(request.name, request.version)
        except (ModelNotFound, Unavailable):  # as Triton: unknown or loading is not ready
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=hosted.app.ready)

    @_rpc()
    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return self._server

    @_rpc()
    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        return self._lookup(request.name, request.version).metadata

    @_rpc()
    async def ModelConfig(self, request: Any, context: Any) -> Any:
        return self._lookup(request.name, request.version).config

    @_rpc()
    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        hosted = (
            [self._lookup(request.name, request.version)]
            if request.name
            else [self._hosted(app) for app in self.app.apps()]
        )
        return statistics_response(
            h.app.metrics.statistics(h.app.model.name, h.app.model.version) for h in hosted
        )

    @_rpc(counted=True)
    async def ModelInfer(self, request: Any, context: Any) -> Any:
        started = time.perf_counter()
        app = self._lookup(request.model_name, request.model_version).app
        try:
            decoded = decode_infer_request(request)
        except ProtocolError as exc:
            raise InvalidInput(str(exc)) from exc
        plan = plan_request(decoded, app.model)
        wanted = frozenset(plan.outputs) if len(plan.outputs) < len(app.model.outputs) else None
        result = await app.batcher.infer(
            plan.feed, priority=plan.priority, timeout_s=plan.timeout_s, outputs=wanted
        )
        try:
            response = encode_infer_response(
                model_name=app.model.name,
                model_version=app.model.version,
                request_id=decoded.id,
                outputs=[(name, result.outputs[name]) for name in plan.outputs],
                raw=decoded.binary_output,
            )
        except ProtocolError as exc:
            raise InvalidInput(f"cannot encode the answer as asked: {exc}") from exc
        app.metrics.on_success(time.perf_counter() - started, result.queue_s, result.compute_s)
        return response
