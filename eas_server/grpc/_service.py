"""The ``inference.GRPCInferenceService`` servicer: KServe v2 gRPC in front of an ``EasApp``.

Every RPC goes where the HTTP route of the same meaning goes: the app's token check (gRPC
metadata ``authorization: Bearer <token>`` or the bare token), its model, its readiness flag,
``plan_request``, its batcher and its metrics (``ModelInfer`` counts outcomes with HTTP's labels).
``ServerLive`` and ``ServerReady`` are open, as ``/v2/health/*`` are. Errors become status codes
through ``_CODES`` and nowhere else, with the text HTTP puts in its ``{"error": ...}`` bodies. The
RPCs not implemented here (repository, shared memory, trace, log settings) answer UNIMPLEMENTED.

Generative (seq2seq) models: ``ModelInfer`` returns the whole answer (as HTTP ``/infer``);
``ModelStreamInfer`` answers in Triton's decoupled style: for each ``ModelInferRequest`` on the
stream, one ``ModelStreamInferResponse`` per token event (output ``tokens`` INT64 [n], and
``text`` with a tokenizer), the last with the parameters ``triton_final_response=true``,
``finish_reason`` and ``output_tokens``; a request that fails gets one response whose
``error_message`` says why (the stream goes on). Requests of one stream run at once, their
responses interleaved (each echoes its request's ``id``). A model that is not generative answers
each streamed request with its one response, marked final. A client that cancels the stream
cancels its generations (their decoder rows are free at the next step).

Handlers are coroutines run on the event loop of the HTTP server and of the batcher.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from eas_client import InferRequest, ProtocolError

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
from .._generate import OIP_PARAMETERS, generate_params, generation_outputs
from .._model import RequestPlan, plan_request
from ..generation._engine import GenerationEvent
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

    def _plan(self, request: Any) -> tuple[EasApp, InferRequest, RequestPlan]:
        """The model a ``ModelInferRequest`` addresses, the request decoded, and its plan.

        Raises:
            ModelNotFound, Unavailable: as ``_lookup``. InvalidInput: a bad request.
        """
        app = self._lookup(request.model_name, request.model_version).app
        try:
            decoded = decode_infer_request(request)
        except ProtocolError as exc:
            raise InvalidInput(str(exc)) from exc
        return app, decoded, plan_request(decoded, app.model)

    @_rpc(counted=True)
    async def ModelInfer(self, request: Any, context: Any) -> Any:
        started = time.perf_counter()
        return await self._infer(*self._plan(request), started)

    async def _infer(
        self, app: EasApp, decoded: InferRequest, plan: RequestPlan, started: float
    ) -> Any:
        """One whole answer (``ModelInfer``, and a streamed request to a model that is not
        generative); counts its success."""
        if app.generator is not None:
            generated = await app.generate_infer(decoded, plan)
            outputs = generation_outputs(generated, plan.outputs)
            queue_s, compute_s = generated.queue_s, generated.total_s - generated.queue_s
        else:
            wanted = frozenset(plan.outputs) if len(plan.outputs) < len(app.model.outputs) else None
            result = await app.batcher.infer(
                plan.feed, priority=plan.priority, timeout_s=plan.timeout_s, outputs=wanted
            )
            outputs = [(name, result.outputs[name]) for name in plan.outputs]
            queue_s, compute_s = result.queue_s, result.compute_s
        response = _encode(app, decoded, outputs)
        app.metrics.on_success(time.perf_counter() - started, queue_s, compute_s)
        return response

    async def ModelStreamInfer(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        """Triton's decoupled streaming (see the module docstring)."""
        self.app.last_request = time.monotonic()
        try:
            self.app.authorize(_authorization(context))
        except Unauthorized as exc:
            await context.abort(_Code.UNAUTHENTICATED, str(exc))
        out: asyncio.Queue[Any] = asyncio.Queue()
        end = object()
        running: set[asyncio.Task[None]] = set()

        async def read() -> None:
            try:
                async for request in request_iterator:
                    self.app.last_request = time.monotonic()
                    task = asyncio.ensure_future(self._stream_one(request, out.put_nowait))
                    running.add(task)
                    task.add_done_callback(running.discard)
                await asyncio.gather(*running)
            finally:
                out.put_nowait(end)

        reader = asyncio.ensure_future(read())
        try:
            while (response := await out.get()) is not end:
                yield response
        finally:  # the client went away (or the stream ended): stop what still runs
            reader.cancel()
            for task in list(running):
                task.cancel()

    async def _stream_one(self, request: Any, put: Callable[[Any], None]) -> None:
        """Answer one streamed request with its responses (or one error response)."""
        started = time.perf_counter()
        try:
            app, decoded, plan = self._plan(request)
            if app.generator is None:
                response = await self._infer(app, decoded, plan, started)
                _mark(response, final=True)
                put(service_pb2.ModelStreamInferResponse(infer_response=response))
                return
            params = generate_params(decoded.parameters, ignored=OIP_PARAMETERS)
            stream = app.generator.submit(plan.feed["audio"], params)
            try:
                async for event in stream:
                    response = _encode(app, decoded, _event_outputs(event, plan.outputs))
                    _mark(response, final=event.finish_reason is not None, event=event)
                    put(service_pb2.ModelStreamInferResponse(infer_response=response))
            finally:
                stream.cancel()  # a no-op once finished
            req = stream.request
            ended = stream.finished_at or time.monotonic()
            begun = req.started or ended
            app.metrics.on_success(
                time.perf_counter() - started, begun - req.arrived, ended - begun
            )
            return
        except EasServerError as exc:
            outcome, message = _code_of(exc)[1], str(exc)
        except Exception as exc:
            log.exception("unexpected error in ModelStreamInfer")
            outcome, message = "error", f"internal error: {type(exc).__name__}: {exc}"
        self.app.record_failure(request.model_name, outcome, time.perf_counter() - started)
        put(service_pb2.ModelStreamInferResponse(error_message=message))


def _encode(app: EasApp, decoded: InferRequest, outputs: list[tuple[str, Any]]) -> Any:
    try:
        return encode_infer_response(
            model_name=app.model.name,
            model_version=app.model.version,
            request_id=decoded.id,
            outputs=outputs,
            raw=decoded.binary_output,
        )
    except ProtocolError as exc:
        raise InvalidInput(f"cannot encode the answer as asked: {exc}") from exc


def _event_outputs(event: GenerationEvent, names: list[str]) -> list[tuple[str, Any]]:
    """One token event as the outputs asked for: ``tokens`` INT64 [n], ``text`` BYTES [1]."""
    arrays: dict[str, Any] = {"tokens": np.asarray(event.tokens, dtype=np.int64)}
    if event.text is not None:
        text = np.empty(1, dtype=object)
        text[0] = event.text.encode()
        arrays["text"] = text
    return [(name, arrays[name]) for name in names if name in arrays]


def _mark(response: Any, *, final: bool, event: GenerationEvent | None = None) -> None:
    """Triton's decoupled markers: ``triton_final_response``, and on the last response of a
    generation its ``finish_reason`` and ``output_tokens``."""
    response.parameters["triton_final_response"].bool_param = final
    if final and event is not None and event.finish_reason is not None:
        response.parameters["finish_reason"].string_param = event.finish_reason
        response.parameters["output_tokens"].int64_param = event.output_tokens
