"""The HTTP face of the server: Open Inference Protocol plus Triton's /config and /stats, and
Triton's generate extension for generative (seq2seq) models, as a raw ASGI application.

The infer route is the hot path: it reads the raw body (no Content-Type needed, tritonclient sends
none), decodes with the shared codec, checks against the signature, queues into the batcher and
writes the encoded answer, with no framework request parsing in between. Errors are always
``{"error": "..."}``; the status of each error class is in ``_STATUS`` and nowhere else.

A generative model (an app with a ``generator``, the seq2seq processor's engine) takes
``POST .../generate`` (the whole answer as JSON), ``POST .../generate_stream`` (one server-sent
event per token event) and ``/infer`` (input ``audio``, outputs ``tokens`` and ``text``). While a
generation runs, the client's connection is watched (``receive()`` answers ``http.disconnect``):
a client that goes away cancels its request, whose decoder rows are free at the next step.
"""

from __future__ import annotations

import abc
import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

import numpy as np
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from eas_client import (
    InferRequest,
    ProtocolError,
    decode_request,
    encode_error,
    encode_response,
)

from ._errors import (
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
from ._generate import (
    OIP_PARAMETERS,
    event_document,
    generate_document,
    generate_params,
    generation_outputs,
    parse_generate_body,
    sse,
)
from ._metrics import ServerMetrics
from ._model import ModelInfo, RequestPlan, plan_request
from .batching import BatchResult, DynamicBatcher
from .generation._engine import (
    GenerateResult,
    GenerationEngine,
    GenerationStream,
)

__all__ = [
    "EasApp", "OipApp", "check_token", "lifespan", "respond", "respond_error", "status_of",
]  # fmt: skip

log = logging.getLogger("eas_server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# (error class, HTTP status, outcome label); the first match wins, so subclasses come first.
_STATUS: tuple[tuple[type[EasServerError], int, str], ...] = (
    (InvalidInput, 400, "bad_request"),
    (ModelNotFound, 404, "not_found"),
    (Unauthorized, 401, "unauthorized"),
    (PayloadTooLarge, 413, "too_large"),
    (QueueFull, 503, "queue_full"),
    (QueueTimeout, 503, "timeout"),
    (Unavailable, 503, "unavailable"),
    (ProcessorError, 500, "error"),
    (EasServerError, 500, "error"),
)
_JSON = b"application/json"
_TRITON_TYPES = {"BYTES": "TYPE_STRING"}
_COUNTED = frozenset({"infer", "generate", "generate_stream"})
"""The routes whose outcomes count in the request metrics."""
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_T = TypeVar("_T")


def _counted(path: str) -> bool:
    return path.rsplit("/", 1)[-1] in _COUNTED


def status_of(exc: EasServerError) -> tuple[int, str]:
    """The HTTP status and outcome label of an error (``_STATUS``)."""
    return next((status, outcome) for cls, status, outcome in _STATUS if isinstance(exc, cls))


async def lifespan(receive: Receive, send: Send) -> None:
    """Answer ASGI's lifespan messages (there is nothing to set up or tear down here)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def check_token(token: bytes | None, value: bytes | None) -> None:
    """Check an ``Authorization`` value (HTTP header or gRPC metadata; None when absent) against
    ``token`` (None: none required), as a Bearer token or EAS's bare one.

    Raises:
        Unauthorized: a token is required and ``value`` does not carry it.
    """
    if token is None:
        return
    if value is None:
        raise Unauthorized("missing token: send Authorization: Bearer <token>")
    given = value[7:] if value[:7].lower() == b"bearer " else value
    if not hmac.compare_digest(given.strip(), token):
        raise Unauthorized("invalid token")


async def respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Send a whole response (JSON unless ``headers`` say otherwise)."""
    hdrs = headers if headers is not None else [(b"content-type", _JSON)]
    hdrs.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


async def respond_error(send: Send, status: int, message: str, exc: Exception | None) -> None:
    """``{"error": message}``, with Retry-After on 503s and WWW-Authenticate on 401s."""
    headers = [(b"content-type", _JSON)]
    if isinstance(exc, Unavailable):
        headers.append((b"retry-after", str(exc.retry_after).encode()))
    elif isinstance(exc, Unauthorized):
        headers.append((b"www-authenticate", b"Bearer"))
    try:
        await respond(send, status, encode_error(message), headers)
    except Exception:  # the response had started, or the client left: nothing more to say
        log.debug("could not send error %d", status, exc_info=True)


class _ClientGone(Exception):
    """The client disconnected before sending its whole body, or while its answer was made."""


async def _disconnected(receive: Receive) -> None:
    """Return when the client has gone (the request's body has been read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _until_disconnect(receive: Receive, work: Awaitable[_T]) -> _T:
    """``await work``, cancelled when the client disconnects first (then ``_ClientGone``)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        watcher.cancel()
        raise
    if task.done():
        watcher.cancel()
        return task.result()
    task.cancel()  # the work cancels its generation (GenerationStream.collect, _stream_events)
    await asyncio.gather(task, return_exceptions=True)
    raise _ClientGone


class OipApp(abc.ABC):
    """ASGI application for one model version: the routes, the hot path and the documents.

    Where requests go and what is recorded are left to subclasses: ``EasApp`` runs them through a
    batcher in this process, a front end process (``eas_server.frontends``) hands them to its
    executor.

    Args:
        model: the served model's description.
        token: when set, every model route needs ``Authorization: Bearer <token>`` or
            ``Authorization: <token>`` (EAS style); health and /metrics stay open.
        max_body_bytes: larger bodies get 413.
        dynamic_batching: the /config ``dynamic_batching`` section.
        instance_group: the /config ``instance_group`` section.
        server_version: reported by ``GET /v2``.
        parameters: the /config ``parameters`` (name -> string value), e.g. ``padding``.
    """

    generator: GenerationEngine | None = None
    """The generation engine of a generative model (``/generate``, ``/generate_stream``, and
    ``/infer`` go to it); None for the others."""

    def __init__(
        self,
        *,
        model: ModelInfo,
        token: str | None = None,
        max_body_bytes: int = 64 << 20,
        max_batch_size: int = 32,
        dynamic_batching: dict[str, Any] | None = None,
        instance_group: list[dict[str, Any]] | None = None,
        server_version: str = "0",
        parameters: dict[str, str] | None = None,
    ):
        self.model = model
        self._parameters = {k: {"string_value": v} for k, v in (parameters or {}).items()}
        self.ready = False
        self.last_request = time.monotonic()
        """When the last HTTP request arrived (monotonic), for the SIGTERM drain."""
        self.in_progress = 0
        """HTTP requests being handled (from arrival to the last byte of the answer)."""
        self._token = token.encode() if token else None
        self._max_body = max_body_bytes
        self._server = orjson.dumps(
            {
                "name": "eas-server",
                "version": server_version,
                "extensions": [
                    "binary_tensor_data",
                    "model_configuration",
                    "statistics",
                    "schedule_policy",
                ],
            }
        )
        self._metadata = orjson.dumps(
            {
                "name": model.name,
                "versions": [model.version],
                "platform": model.platform,
                "inputs": [
                    {"name": s.name, "datatype": s.datatype, "shape": model.shape(s)}
                    for s in model.inputs
                ],
                "outputs": [
                    {"name": s.name, "datatype": s.datatype, "shape": model.shape(s)}
                    for s in model.outputs
                ],
            }
        )
        self._config = orjson.dumps(
            self._model_config(max_batch_size, dynamic_batching, instance_group)
        )

    def server_document(self) -> dict[str, Any]:
        """``GET /v2``'s document."""
        return dict(orjson.loads(self._server))

    def documents(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """The server metadata, model metadata and model config documents, as ``GET /v2``,
        ``GET /v2/models/{m}`` and ``GET .../config`` answer them (for the gRPC front end)."""
        return orjson.loads(self._server), orjson.loads(self._metadata), orjson.loads(self._config)

    def _model_config(
        self,
        max_batch_size: int,
        dynamic_batching: dict[str, Any] | None,
        instance_group: list[dict[str, Any]] | None,
    ) -> dict[str, Any]:
        m = self.model

        def dtype(datatype: str) -> str:
            return _TRITON_TYPES.get(datatype, f"TYPE_{datatype}")

        config: dict[str, Any] = {
            "name": m.name,
            "platform": m.platform,
            "backend": m.backend,
            "version_policy": {"specific": {"versions": [m.version]}},
            "max_batch_size": max_batch_size if m.batchable else 0,
            "input": [
                {
                    "name": s.name,
                    "data_type": dtype(s.datatype),
                    "format": "FORMAT_NONE",
                    "dims": list(s.shape),
                    "is_shape_tensor": False,
                    "allow_ragged_batch": False,
                    "optional": False,
                }
                for s in m.inputs
            ],
            "output": [
                {
                    "name": s.name,
                    "data_type": dtype(s.datatype),
                    "dims": list(s.shape),
                    "label_filename": "",
                    "is_shape_tensor": False,
                }
                for s in m.outputs
            ],
            "instance_group": instance_group or [],
            "parameters": self._parameters,
            "model_warmup": [],
        }
        if dynamic_batching is not None and m.batchable:
            config["dynamic_batching"] = dynamic_batching
        return config

    # ------------------------------------------------------------- where requests go (hooks)

    @abc.abstractmethod
    async def submit(
        self,
        inputs: dict[str, np.ndarray],
        *,
        priority: int,
        timeout_s: float | None,
        outputs: frozenset[str] | None,
    ) -> BatchResult:
        """Run one checked request (``DynamicBatcher.infer``'s contract and errors)."""

    @abc.abstractmethod
    def on_success(self, total_s: float, queue_s: float, compute_s: float) -> None:
        """Record an answered infer request."""

    @abc.abstractmethod
    def on_failure(self, outcome: str, total_s: float) -> None:
        """Record a failed infer request (``outcome`` as in ``_STATUS``)."""

    @abc.abstractmethod
    async def stats_document(self) -> bytes:
        """The statistics extension's answer for this model."""

    @abc.abstractmethod
    async def metrics_document(self) -> bytes:
        """The Prometheus exposition of the instance."""

    # ---------------------------------------------------------------------------------- ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        self.last_request = time.monotonic()
        self.in_progress += 1  # before any await: an unload waits for this call
        try:
            await self._handle(scope, receive, send, started)
        finally:
            self.in_progress -= 1

    async def _handle(self, scope: Scope, receive: Receive, send: Send, started: float) -> None:
        try:
            await self._route(scope, receive, send, started)
        except _ClientGone:
            return
        except EasServerError as exc:
            status, outcome = status_of(exc)
            if _counted(scope["path"]):
                self.on_failure(outcome, time.perf_counter() - started)
            await self._error(send, status, str(exc), exc)
        except Exception as exc:
            log.exception("unexpected error on %s %s", scope["method"], scope["path"])
            if _counted(scope["path"]):
                self.on_failure("error", time.perf_counter() - started)
            await self._error(send, 500, f"internal error: {type(exc).__name__}: {exc}", None)

    async def _route(self, scope: Scope, receive: Receive, send: Send, started: float) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        parts = path.strip("/").split("/")
        if parts[0] != "v2":
            if path == "/metrics" and method == "GET":
                body = await self.metrics_document()
                await self._send(send, 200, body, CONTENT_TYPE_LATEST.encode())
                return
            raise ModelNotFound(f"no route {method} {path}")
        rest = parts[1:]
        if rest[:1] == ["health"] and len(rest) == 2 and method == "GET":
            ok = rest[1] == "live" or (rest[1] == "ready" and self.ready)
            if rest[1] not in ("live", "ready"):
                raise ModelNotFound(f"no route {method} {path}")
            await self._send(
                send, 200 if ok else 503, b"" if ok else encode_error("not ready"), _JSON
            )
            return
        self._authorize(scope)
        if not rest and method == "GET":
            await self._send(send, 200, self._server, _JSON)
            return
        if rest == ["models", "stats"] and method == "GET":
            await self._send(send, 200, await self.stats_document(), _JSON)
            return
        if len(rest) < 2 or rest[0] != "models":
            raise ModelNotFound(f"no route {method} {path}")
        name, version, action = rest[1], None, rest[2:]
        if action[:1] == ["versions"]:
            if len(action) < 2:
                raise ModelNotFound(f"no route {method} {path}")
            version, action = action[1], action[2:]
        self.model.check_address(name, version)
        await self._model_route(action, method, path, scope, receive, send, started)

    async def _model_route(
        self,
        action: list[str],
        method: str,
        path: str,
        scope: Scope,
        receive: Receive,
        send: Send,
        started: float,
    ) -> None:
        if action == ["infer"] and method == "POST":
            await self._infer(scope, receive, send, started)
        elif action in (["generate"], ["generate_stream"]) and method == "POST":
            await self._generate(scope, receive, send, started, stream=action[0] != "generate")
        elif not action and method == "GET":
            await self._send(send, 200, self._metadata, _JSON)
        elif action == ["ready"] and method == "GET":
            await self._send(send, 200 if self.ready else 503, b"", _JSON)
        elif action == ["config"] and method == "GET":
            await self._send(send, 200, self._config, _JSON)
        elif action == ["stats"] and method == "GET":
            await self._send(send, 200, await self.stats_document(), _JSON)
        else:
            raise ModelNotFound(f"no route {method} {path}")

    # ------------------------------------------------------------------------------ hot path

    async def _infer(self, scope: Scope, receive: Receive, send: Send, started: float) -> None:
        header_length = None
        content_length = None
        for key, value in scope["headers"]:
            if key == b"inference-header-content-length":
                header_length = value.decode("latin-1")
            elif key == b"content-length":
                content_length = value
        body = await self._read_body(receive, content_length)
        try:
            request = decode_request(body, header_length)
        except ProtocolError as exc:
            raise InvalidInput(str(exc)) from exc
        plan = plan_request(request, self.model)
        if self.generator is not None:
            work = self.generate_infer(request, plan)
            generated = await _until_disconnect(receive, work)
            outputs = generation_outputs(generated, plan.outputs)
            queue_s, compute_s = generated.queue_s, generated.total_s - generated.queue_s
        else:
            wanted = (
                frozenset(plan.outputs) if len(plan.outputs) < len(self.model.outputs) else None
            )
            result = await self.submit(
                plan.feed, priority=plan.priority, timeout_s=plan.timeout_s, outputs=wanted
            )
            outputs = [(name, result.outputs[name]) for name in plan.outputs]
            queue_s, compute_s = result.queue_s, result.compute_s
        try:
            payload, json_length = encode_response(
                model_name=self.model.name,
                model_version=self.model.version,
                request_id=request.id,
                outputs=outputs,
                binary=request.wants_binary,
            )
        except ProtocolError as exc:
            raise InvalidInput(f"cannot encode the answer as asked: {exc}") from exc
        headers = [(b"content-type", _JSON if json_length is None else b"application/octet-stream")]
        if json_length is not None:
            headers.append((b"inference-header-content-length", str(json_length).encode()))
        await self._send(send, 200, payload, headers=headers)
        self.on_success(time.perf_counter() - started, queue_s, compute_s)

    # ---------------------------------------------------------------------------- generation

    def _generator(self) -> GenerationEngine:
        if self.generator is None:
            raise InvalidInput(
                f"model {self.model.name} is not generative (platform {self.model.platform!r}): "
                "/generate and /generate_stream serve seq2seq models; call /infer"
            )
        return self.generator

    async def generate_infer(self, request: InferRequest, plan: RequestPlan) -> GenerateResult:
        """A generative model's answer to a checked OIP request (``/infer``, gRPC ModelInfer):
        input ``audio``, parameters ``max_new_tokens``, ``num_beams``, ``timeout``.

        Raises:
            InvalidInput: bad audio or parameters. QueueFull, QueueTimeout, ShuttingDown,
                ProcessorError: as the engine raises them.
        """
        params = generate_params(request.parameters, ignored=OIP_PARAMETERS)
        return await self._generator().submit(plan.feed["audio"], params).collect()

    async def _generate(
        self, scope: Scope, receive: Receive, send: Send, started: float, *, stream: bool
    ) -> None:
        generator = self._generator()
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        request = parse_generate_body(await self._read_body(receive, length))
        generation = generator.submit(request.audio, request.params)  # 400 / 503 from here
        if stream:
            await _until_disconnect(
                receive, self._stream_events(generation, send, request.id, started)
            )
            return
        result = await _until_disconnect(receive, generation.collect())
        document = generate_document(self.model, request.id, result)
        await self._send(send, 200, orjson.dumps(document), _JSON)
        self.on_success(time.perf_counter() - started, result.queue_s,
                        result.total_s - result.queue_s)  # fmt: skip

    async def _stream_events(
        self, generation: GenerationStream, send: Send, request_id: str | None, started: float
    ) -> None:
        """Send each event as it comes. An error before the first event raises (the client gets
        its status); after it, an ``{"error"}`` event ends the stream."""
        try:
            event = await anext(generation)
        except BaseException:
            generation.cancel()
            raise
        await send({"type": "http.response.start", "status": 200, "headers": list(_SSE_HEADERS)})
        tail = b""
        try:
            while True:
                chunk = sse(event_document(self.model, request_id, event))
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if event.finish_reason is not None:
                    break
                event = await anext(generation)
        except StopAsyncIteration:  # cancelled meanwhile: nothing more will come
            pass
        except EasServerError as exc:
            self.on_failure(status_of(exc)[1], time.perf_counter() - started)
            tail = sse({"error": str(exc)})
        except Exception as exc:
            log.exception("generation stream failed")
            self.on_failure("error", time.perf_counter() - started)
            tail = sse({"error": f"internal error: {type(exc).__name__}: {exc}"})
        else:
            request = generation.request
            ended = generation.finished_at or time.monotonic()
            begun = request.started or ended
            self.on_success(time.perf_counter() - started, begun - request.arrived, ended - begun)
        finally:
            generation.cancel()  # no-op once finished; frees the rows of one that is not
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    async def _read_body(self, receive: Receive, content_length: bytes | None) -> bytes:
        if content_length is not None:
            # uvicorn's parser refuses a malformed Content-Length, other ASGI servers may not
            declared = content_length.strip()
            if not declared.isdigit():
                raise InvalidInput(f"Content-Length {content_length!r} is not a byte count")
            if len(declared) > 18 or int(declared) > self._max_body:
                raise PayloadTooLarge(
                    f"body of {declared.decode()} bytes is over the limit of {self._max_body}"
                )
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        body: bytes = message.get("body", b"")
        if not message.get("more_body"):
            if len(body) > self._max_body:
                raise PayloadTooLarge(f"body is over the limit of {self._max_body} bytes")
            return body
        chunks = [body]
        size = len(body)
        while message.get("more_body"):
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                raise PayloadTooLarge(f"body is over the limit of {self._max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _authorize(self, scope: Scope) -> None:
        if self._token is not None:
            self.authorize(next((v for k, v in scope["headers"] if k == b"authorization"), None))

    def authorize(self, value: bytes | None) -> None:
        """Check an ``Authorization`` value (HTTP header or gRPC metadata; None when absent).

        Raises:
            Unauthorized: a token is required and ``value`` does not carry it.
        """
        check_token(self._token, value)

    # ------------------------------------------------------------------------------- output

    @staticmethod
    async def _send(
        send: Send,
        status: int,
        body: bytes,
        content_type: bytes = _JSON,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        await respond(send, status, body, headers or [(b"content-type", content_type)])

    async def _error(
        self, send: Send, status: int, message: str, exc: EasServerError | None
    ) -> None:
        await respond_error(send, status, message, exc)


class EasApp(OipApp):
    """The in-process application: requests go to ``batcher`` (or ``generator``), records to
    ``metrics``.

    Args:
        batcher: where requests go.
        metrics: metrics and statistics sink.
        generator: a generative model's engine (its ``/infer`` and generate routes go there).
        **options: ``OipApp``'s arguments.
    """

    def __init__(
        self,
        *,
        batcher: DynamicBatcher,
        metrics: ServerMetrics,
        generator: GenerationEngine | None = None,
        **options: Any,
    ):
        super().__init__(**options)
        self.batcher = batcher
        self.metrics = metrics
        self.generator = generator

    @property
    def busy(self) -> bool:
        """Requests are queued or running (in the batcher or the generation engine)."""
        generator = self.generator
        return self.batcher.busy or (generator is not None and not generator.scheduler.idle())

    # the catalog that the gRPC front end reads (a repository app has the same three)

    def find(self, name: str, version: str | None) -> EasApp:
        """This app, if it serves ``name``/``version`` (None: any); else ModelNotFound."""
        self.model.check_address(name, version)
        return self

    def apps(self) -> list[EasApp]:
        return [self]

    def record_failure(self, name: str, outcome: str, total_s: float) -> None:
        """A failed infer call addressed to ``name`` (counted here whatever the name)."""
        self.on_failure(outcome, total_s)

    async def submit(
        self,
        inputs: dict[str, np.ndarray],
        *,
        priority: int,
        timeout_s: float | None,
        outputs: frozenset[str] | None,
    ) -> BatchResult:
        return await self.batcher.infer(
            inputs, priority=priority, timeout_s=timeout_s, outputs=outputs
        )

    def on_success(self, total_s: float, queue_s: float, compute_s: float) -> None:
        self.metrics.on_success(total_s, queue_s, compute_s)

    def on_failure(self, outcome: str, total_s: float) -> None:
        self.metrics.on_failure(outcome, total_s)

    async def stats_document(self) -> bytes:
        stats = {"model_stats": [self.metrics.statistics(self.model.name, self.model.version)]}
        return orjson.dumps(stats)

    async def metrics_document(self) -> bytes:
        return generate_latest(self.metrics.registry)
