"""Everything the two clients share that is not I/O: options, discovery, request building,
decoding, error conversion, and the call loop with its retry policy.

The call loop is written once, as a generator (:meth:`_BaseEasClient._call`): it yields a
``Request`` (POST this body to this URL, with these headers and timeouts) and is sent back the
transport's ``Reply``, or has the transport's error thrown in (both from the one transport
interface, ``eas_client._transport``: whichever transport the client holds, the loop sees the same
reply type and only our errors). ``EasClient`` drives it blocking, ``AsyncEasClient`` awaiting;
neither makes a decision of its own. Closing the generator (the caller gave up, the task was
cancelled) releases the instance it was calling.

Retry policy: a connect error or dropped connection, a timeout that leaves time, and a 503 are
retried on *another* instance, while attempts are under ``max_attempts``, the call's deadline has
time left and the :class:`RetryBudget` allows; 400, 401/403, 404, 500 and malformed answers never
are. Inference is free of side effects, so a request the server may have seen is safe to repeat.

Generation (``eas_client._generate``) goes through the same loop: a whole ``generate`` is one
request like ``infer`` (its body made per attempt, with the time left as the server's deadline).
A ``generate_stream`` is driven by :class:`_StreamCall`, the same policy with one more rule: once
the first event has arrived the stream is pinned to its instance, and any failure after it is
raised (the tokens already handed out cannot be taken back).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import quote, urlsplit

import numpy as np

from ._balancer import DEFAULT_WEIGHT, Balancer, Endpoint, RetryBudget, Target
from ._codec import decode_error, decode_response, encode_request
from ._errors import (
    ConnectError,
    EasClientError,
    InvalidRequest,
    ModelNotFound,
    NoInstanceAvailable,
    ProtocolError,
    ServerError,
    ServiceUnavailable,
    TimeoutException,
    Unauthorized,
)
from ._generate import (
    GenerateChunk,
    GenerateRequest,
    GenerateResult,
    SseDecoder,
    parse_chunk,
    parse_result,
)
from ._metrics import CallMetrics, ClientMetrics
from ._transport import Reply, Request

if TYPE_CHECKING:
    from config_store import ConfigStore, Instance, Listener

__all__ = ["Outputs"]

log = logging.getLogger("eas_client")

Outputs = dict[str, np.ndarray[Any, Any]]

# A connect that takes longer than this is given up, so that a black-holed instance leaves time to
# retry another one; the rest of the call may use the whole remaining deadline.
_CONNECT_TIMEOUT_S: Final = 1.0
# Below this much time left, a retry is not worth starting.
_MIN_ATTEMPT_S: Final = 0.001
_BINARY_TYPE: Final = "application/octet-stream"
_JSON_TYPE: Final = "application/json"
_EVENTS_TYPE: Final = "text/event-stream"
# A generation's deadline is the server's: it ends the answer there (finish_reason "deadline").
# The client waits this much longer for that answer before it gives up on the instance.
_GENERATE_GRACE_S: Final = 1.0

T = TypeVar("T")
Body = Callable[[float], tuple[bytes, dict[str, str]]]
"""The body and headers of an attempt, given the seconds the call has left."""


def _number(value: object, what: str, *, minimum: float, integer: bool = False) -> Any:
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or not (minimum <= value < math.inf):  # type: ignore[operator]
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{what} must be {kind} >= {minimum:g}, got {value!r}")
    return value


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _weight(payload: Mapping[str, Any]) -> int:
    weight = payload.get("weight", DEFAULT_WEIGHT)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight >= 0:
        log.debug("ignoring registered weight %r; using %d", weight, DEFAULT_WEIGHT)
        return DEFAULT_WEIGHT
    return int(min(weight, 1 << 30))


def _infer_path(model: str, version: str | None) -> str:
    path = f"/v2/models/{quote(model, safe='')}"
    if version is not None:
        path += f"/versions/{quote(version, safe='')}"
    return path + "/infer"


def _generate_url(infer_url: str, stream: bool) -> str:
    """The generate (or generate_stream) URL of a model, from its infer URL."""
    return infer_url[: -len("infer")] + ("generate_stream" if stream else "generate")


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: not worth parsing for a hint
    return seconds if 0 <= seconds < math.inf else None


def _outcome(error: EasClientError) -> str:
    if isinstance(error, TimeoutException):
        return "timeout"
    if isinstance(error, ServiceUnavailable | NoInstanceAvailable | ConnectError):
        return "unavailable"
    if isinstance(error, InvalidRequest | ModelNotFound | Unauthorized | ProtocolError):
        return "invalid"
    return "error"


def _brief(error: EasClientError) -> str:
    if isinstance(error, ServerError):
        return str(error.status_code)
    return type(error).__name__


class _BaseEasClient:
    """Options, discovery and the call loop of ``EasClient`` / ``AsyncEasClient``.

    Subclasses hold a transport, call :meth:`_start_discovery` (sync) or run it in a thread
    (async), and drive :meth:`_call`. See ``EasClient`` for the arguments.
    """

    _kind = "EasClient"

    def __init__(
        self,
        *,
        store: ConfigStore | str | None,
        service: str | None,
        urls: Sequence[str] | None,
        model: str | None,
        version: str | None,
        token: str | None,
        timeout: float,
        binary: bool,
        max_attempts: int,
        retry_budget: RetryBudget | None,
        max_connections_per_instance: int,
        metrics: ClientMetrics | None,
        labels: Mapping[str, str] | None,
        eject_after: int,
        eject_for: float,
        attempt_timeout: float | None = None,
    ):
        if (store is None) == (urls is None):
            raise ValueError(
                f"{self._kind} needs either store= and service= (discovery) or urls= "
                "(a fixed list of instances), not both and not neither"
            )
        for value, what in ((service, "service"), (model, "model"), (version, "version")):
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{what} must be a non-empty string, got {value!r}")
        if store is not None and service is None:
            raise ValueError(f"{self._kind}(store=...) needs service=, the service to discover")
        if urls is not None and model is None and service is None:
            raise ValueError(f"{self._kind}(urls=...) needs model=, the model name to call")
        if token is not None and not isinstance(token, str):
            raise ValueError(f"token must be a string, got {type(token).__name__}")
        self._timeout = float(_number(timeout, "timeout", minimum=1e-6))
        self._attempt_timeout: float | None = (
            None
            if attempt_timeout is None
            else float(_number(attempt_timeout, "attempt_timeout", minimum=1e-6))
        )
        self._max_attempts: int = _number(max_attempts, "max_attempts", minimum=1, integer=True)
        self._max_connections: int = _number(
            max_connections_per_instance, "max_connections_per_instance", minimum=1, integer=True
        )
        self._model = model
        self._version = version
        self._service = service
        self._name: str = service or model or ""
        """What errors call the service."""
        self._binary = bool(binary)
        self._budget = retry_budget if retry_budget is not None else RetryBudget()
        self._balancer = Balancer(eject_after=eject_after, eject_for=eject_for)
        self._headers: dict[str, str] = {
            "content-type": _BINARY_TYPE if self._binary else _JSON_TYPE
        }
        self._json_headers = {**self._headers, "content-type": _JSON_TYPE}
        if token:
            self._headers["authorization"] = self._json_headers["authorization"] = f"Bearer {token}"
        values = {
            "model": model or service or "",
            "version": version or "",
            "processor": "onnx",
            **(labels or {}),
        }
        self._metrics: CallMetrics | None = metrics.bind(values) if metrics is not None else None
        self._store_arg = store
        self._store: ConfigStore | None = None
        self._watch: Listener | None = None
        self._retired: list[Endpoint] = []
        self._retired_lock = threading.Lock()
        self._closed = False
        if urls is not None:
            self._balancer.update(self._static_targets(urls))

    # ------------------------------------------------------------------------------- discovery

    def _static_targets(self, urls: Sequence[str]) -> list[Target]:
        from config_store import Instance

        if isinstance(urls, str | bytes) or not urls:
            raise ValueError(f"urls must be a non-empty list of http(s) URLs, got {urls!r}")
        model = self._model or self._name
        targets: list[Target] = []
        for url in urls:
            parts = urlsplit(url) if isinstance(url, str) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"urls: expected http://host:port or https://..., got {url!r}")
            try:
                port = parts.port or (443 if parts.scheme == "https" else 80)
            except ValueError as exc:
                raise ValueError(f"urls: {url!r} has an invalid port") from exc
            host = parts.hostname
            origin = f"{parts.scheme}://{f'[{host}]' if ':' in host else host}:{port}"
            instance = Instance(self._name, f"{host}:{port}", host, port, "ALIVE", {})
            if any(t.id == instance.id for t in targets):
                raise ValueError(f"urls: {url!r} is listed twice (same host and port)")
            url_of = origin + parts.path.rstrip("/") + _infer_path(model, self._version)
            targets.append(Target(instance.id, url_of, origin, DEFAULT_WEIGHT, instance))
        return targets

    def _target(self, instance: Instance) -> Target:
        payload = instance.payload
        model = self._model or _text(payload.get("model")) or instance.service
        version = self._version if self._version is not None else _text(payload.get("version"))
        host = f"[{instance.host}]" if ":" in instance.host else instance.host
        origin = f"http://{host}:{instance.port}"
        url = origin + _infer_path(model, version)
        return Target(instance.id, url, origin, _weight(payload), instance)

    def _on_instances(self, instances: list[Instance]) -> None:
        """Discovery callback (a store thread): swap the instance set in one step."""
        removed = self._balancer.update(self._target(i) for i in instances if i.status == "ALIVE")
        if removed:
            with self._retired_lock:
                self._retired.extend(removed)

    def _start_discovery(self) -> None:
        """Open the store (when given as a URL), watch the service, read it once. Blocking."""
        if self._store_arg is None or self._store is not None:
            return
        from config_store import ConfigStoreError, open_store

        assert self._service is not None
        store = open_store(self._store_arg) if isinstance(self._store_arg, str) else self._store_arg
        self._store = store
        self._watch = store.watch_instances(self._service, self._on_instances)
        # The watch delivers on a store thread, maybe later: read once so the first call finds
        # the instances; a delivery that came first is newer and wins (seed).
        try:
            found = store.instances(self._service)
        except ConfigStoreError as exc:
            log.info("eas_client: first read of %s failed (%s); waiting for the watch", store, exc)
            return
        self._balancer.seed(self._target(i) for i in found if i.status == "ALIVE")

    def _stop_discovery(self) -> None:
        """Cancel the watch; close the store if this client opened it. Blocking."""
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
        if isinstance(self._store_arg, str) and self._store is not None:
            self._store.close()

    def _reapable(self) -> list[str]:
        """Origins of instances gone from discovery with nothing in flight: close their pools."""
        live = {endpoint.target.origin for endpoint in self._balancer.endpoints()}
        done: list[str] = []
        with self._retired_lock:
            keep = [endpoint for endpoint in self._retired if endpoint.outstanding > 0]
            for endpoint in self._retired:
                origin = endpoint.target.origin
                if endpoint.outstanding <= 0 and origin not in live and origin not in done:
                    done.append(origin)
            self._retired = keep
        return done

    def instances(self) -> list[Instance]:
        """The instances the client currently routes to (discovery's latest list, or ``urls``)."""
        return [endpoint.target.instance for endpoint in self._balancer.endpoints()]

    def __repr__(self) -> str:
        return f"<{self._kind} {self._name!r} instances={len(self._balancer.endpoints())}>"

    # ------------------------------------------------------------------------------ call loop

    def _call(
        self,
        inputs: Mapping[str, np.ndarray[Any, Any]],
        outputs: Sequence[str] | None,
        timeout: float | None,
    ) -> Generator[Request, Reply, Outputs]:
        """The call loop of ``infer``: yields requests, is sent their replies (or has the
        transport's error thrown in), returns the outputs or raises."""
        started, limit = self._begin(timeout)
        try:
            body, headers = self._encode(inputs, outputs)
        except EasClientError as exc:
            self._observe(exc, started, 0)
            raise
        return (
            yield from self._attempts(
                lambda _left: (body, headers), None, self._decode, started, limit
            )
        )

    def _generate_call(
        self, request: GenerateRequest, limit: float
    ) -> Generator[Request, Reply, GenerateResult]:
        """The call loop of ``generate``: as ``_call``, with the time left sent as the server's
        deadline and ``_GENERATE_GRACE_S`` more to wait for the answer it ends there."""
        started = time.perf_counter()
        headers = self._json_headers

        def body(left: float) -> tuple[bytes, dict[str, str]]:
            return request.body(left), headers

        return (
            yield from self._attempts(
                body, False, _decode_generated, started, limit, grace=_GENERATE_GRACE_S
            )
        )

    def _generate_request(
        self,
        audio: object,
        max_new_tokens: int | None,
        num_beams: int,
        request_id: str | None,
        timeout: float | None,
    ) -> tuple[GenerateRequest, float]:
        """A generate call's request and time limit, checked before anything is sent.

        Raises:
            ProtocolError: the audio cannot be sent (counted as an invalid call).
            ValueError: a parameter or the timeout is out of range.
            RuntimeError: the client is closed.
        """
        if self._closed:
            raise RuntimeError(f"this {self._kind} is closed")
        limit = self._limit(timeout)
        try:
            request = GenerateRequest(
                audio, max_new_tokens=max_new_tokens, num_beams=num_beams, request_id=request_id
            )
        except ProtocolError as exc:
            self._observe(exc, time.perf_counter(), 0)
            raise
        return request, limit

    def _limit(self, timeout: float | None) -> float:
        return float(
            self._timeout if timeout is None else _number(timeout, "timeout", minimum=1e-6)
        )

    def _begin(self, timeout: float | None) -> tuple[float, float]:
        """A call's start (``perf_counter``) and time limit; raises when the client is closed."""
        if self._closed:
            raise RuntimeError(f"this {self._kind} is closed")
        return time.perf_counter(), self._limit(timeout)

    def _observe(self, error: EasClientError | None, started: float, retries: int) -> None:
        if self._metrics is not None:
            outcome = "ok" if error is None else _outcome(error)
            self._metrics.observe(outcome, time.perf_counter() - started, retries)

    def _attempts(
        self,
        body_of: Body,
        stream: bool | None,
        decode: Callable[[Reply], T],
        started: float,
        limit: float,
        *,
        grace: float = 0.0,
    ) -> Generator[Request, Reply, T]:
        """The retry loop shared by ``infer`` (``stream`` None: the infer URL) and ``generate``
        (False: the generate URL)."""
        deadline = started + limit
        retries = 0
        try:
            self._budget.deposit()
            tried: list[str] = []  # instance ids, never picked again in this call
            failed: list[str] = []  # "id (what went wrong)", for the note of the final error
            last: EasClientError | None = None
            while True:
                remaining = deadline - time.perf_counter()
                body, headers = body_of(remaining)
                endpoint = self._next(tried, failed, last)
                if last is not None:
                    retries += 1
                target = endpoint.target
                # A generation takes as long as its tokens do: attempt_timeout (the bound of a
                # hung instance's cost on infer) does not apply to it (grace > 0).
                wait = (
                    remaining
                    if self._attempt_timeout is None or grace
                    else min(remaining, self._attempt_timeout)
                )
                request = Request(
                    target.url if stream is None else _generate_url(target.url, stream),
                    target.origin,
                    body,
                    headers,
                    timeout=wait + grace,
                    connect=min(wait, _CONNECT_TIMEOUT_S),
                    pool=remaining,
                )
                try:
                    reply = yield request
                except EasClientError as exc:  # the transport's error, thrown in by the client
                    last = self._failed(endpoint, exc)
                except BaseException:  # closed (caller gone, task cancelled): no verdict
                    self._balancer.release(endpoint, None)
                    raise
                else:
                    result = self._settle(endpoint, reply, decode)
                    if not isinstance(result, EasClientError):
                        self._observe(None, started, retries)
                        return result
                    last = result
                tried.append(target.id)
                failed.append(f"{target.id} ({_brief(last)})")
                self._may_retry(last, tried, failed, deadline, limit)
        except EasClientError as exc:
            self._observe(exc, started, retries)
            raise

    def _may_retry(
        self,
        last: EasClientError,
        tried: list[str],
        failed: list[str],
        deadline: float,
        limit: float,
    ) -> None:
        """Raise the final error when no attempt may follow ``last``."""
        if len(tried) >= self._max_attempts:
            raise self._give_up(last, failed, f"max_attempts={self._max_attempts} reached")
        if deadline - time.perf_counter() < _MIN_ATTEMPT_S:
            raise self._give_up(last, failed, f"the {limit:g} s deadline has passed")

    def _next(self, tried: list[str], failed: list[str], last: EasClientError | None) -> Endpoint:
        """The instance for the next attempt; raises when the call must stop instead."""
        endpoint = self._balancer.pick(tried)
        if endpoint is None:
            if last is None:
                raise NoInstanceAvailable(
                    f"service {self._name!r} has no instance to call: {self._balancer.describe()}",
                    service=self._name,
                )
            raise self._give_up(last, failed, "no other instance is left to retry on")
        if last is not None and not self._budget.try_withdraw():
            self._balancer.release(endpoint, None)
            raise self._give_up(last, failed, "the retry budget is spent")
        return endpoint

    def _settle(
        self, endpoint: Endpoint, reply: Reply, decode: Callable[[Reply], T]
    ) -> T | EasClientError:
        """Release ``endpoint`` with the verdict of its reply; return the decoded answer or a
        retryable error (503), raise the errors that must not be retried."""
        status = reply.status_code
        self._balancer.release(endpoint, status != 503)
        if status == 200:
            return decode(reply)
        error = self._server_error(reply)
        if status != 503:
            error.add_note(f"from instance {endpoint.target.id} of service {self._name!r}")
            raise error
        return error

    def _failed(self, endpoint: Endpoint, error: EasClientError) -> EasClientError:
        """Release ``endpoint`` after the transport's ``error``; return it when it is retryable
        (a connect error or a timeout), raise it when not."""
        retryable = isinstance(error, ConnectError | TimeoutException)
        self._balancer.release(endpoint, False if retryable else None)
        if not retryable:
            raise error
        return error

    def _give_up(self, error: EasClientError, failed: list[str], why: str) -> EasClientError:
        """The error a call ends with: ``NoInstanceAvailable`` when the last instance tried
        refused the connection (none is alive as far as this call could tell), otherwise the last
        error itself (a 503 stays ``ServiceUnavailable``, a timeout ``TimeoutException``)."""
        detail = f"service {self._name!r}: tried {', '.join(failed)}; {why}"
        if isinstance(error, ConnectError):
            gone = NoInstanceAvailable(f"no live instance answered: {detail}", service=self._name)
            gone.__cause__ = error
            return gone
        error.add_note(detail)
        return error

    def _encode(
        self, inputs: Mapping[str, np.ndarray[Any, Any]], outputs: Sequence[str] | None
    ) -> tuple[bytes, dict[str, str]]:
        binary = self._binary
        if isinstance(outputs, str):
            raise ProtocolError(f"outputs must be a list of output names, got {outputs!r}")
        body, length = encode_request(
            inputs, outputs=outputs, binary_inputs=binary, binary_outputs=binary
        )
        if length is None:
            return body, self._json_headers
        return body, {**self._headers, "inference-header-content-length": str(length)}

    @staticmethod
    def _decode(reply: Reply) -> Outputs:
        length = reply.headers.get("inference-header-content-length")
        return decode_response(reply.content, length).outputs

    @staticmethod
    def _server_error(reply: Reply) -> ServerError:
        return ServerError.from_status(
            reply.status_code,
            decode_error(reply.content),
            retry_after=_retry_after(reply.headers.get("retry-after")),
        )


def _decode_generated(reply: Reply) -> GenerateResult:
    return parse_result(reply.content)


def _not_a_stream(reply: Reply) -> None:
    raise AssertionError("a 200 answer of generate_stream is read as a stream")


class _StreamCall:
    """The decisions of one ``generate_stream`` call (``_StreamCall(client, request, limit)``),
    driven by a client's I/O shell::

        request = call.first()
        loop: open a stream with `request`
              - the transport failed:      request = call.failed(error)
              - a status other than 200:   request = call.refused(reply)
              - 200: for each piece of body read: hand out call.events(piece)
                     (a transport error while reading: request = call.failed(error))
                     at the end of the body: return if call.done, else request = call.ended()
                     (once call.done, an error reading on to the end is ignored: the answer
                     was whole)
        finally: call.close()

    Each of ``failed``, ``refused`` and ``ended`` returns the next attempt's request, or raises
    the call's final error (also when ``failed`` is handed an error this object raised itself).
    Before the first event, attempts follow ``infer``'s retry policy; from the first event on
    the call is pinned to its instance and any failure is raised.
    """

    __slots__ = (
        "_client",
        "_decoder",
        "_endpoint",
        "_events",
        "_failed",
        "_last",
        "_limit",
        "_request",
        "_retries",
        "_started",
        "_tried",
        "done",
    )

    def __init__(self, client: _BaseEasClient, request: GenerateRequest, limit: float):
        self._client = client
        self._request = request
        self._started = 0.0
        self._limit = limit
        self._tried: list[str] = []
        self._failed: list[str] = []
        self._last: EasClientError | None = None
        self._endpoint: Endpoint | None = None
        self._decoder = SseDecoder()
        self._events = 0
        self._retries = 0
        self.done = False
        """The final event has been handed out."""

    def first(self) -> Request:
        """The first attempt's request; the call's deadline counts from here."""
        client = self._client
        if client._closed:
            raise RuntimeError(f"this {client._kind} is closed")
        self._started = time.perf_counter()
        client._budget.deposit()
        return self._attempt()

    def _attempt(self) -> Request:
        client = self._client
        remaining = self._started + self._limit - time.perf_counter()
        body = self._request.body(remaining)
        try:
            endpoint = client._next(self._tried, self._failed, self._last)
        except EasClientError as exc:
            client._observe(exc, self._started, self._retries)
            raise
        if self._last is not None:
            self._retries += 1
        self._endpoint = endpoint
        self._decoder = SseDecoder()
        target = endpoint.target
        return Request(
            _generate_url(target.url, True),
            target.origin,
            body,
            {**client._json_headers, "accept": _EVENTS_TYPE},
            timeout=remaining + _GENERATE_GRACE_S,
            connect=min(remaining, _CONNECT_TIMEOUT_S),
            pool=remaining,
        )

    def _end(self, ok: bool | None, error: EasClientError | None) -> None:
        """Release the instance with verdict ``ok``; count the call's outcome."""
        endpoint, self._endpoint = self._endpoint, None
        if endpoint is not None:
            self._client._balancer.release(endpoint, ok)
        self._client._observe(error, self._started, self._retries)

    def _next_attempt(self, error: EasClientError, target_id: str) -> Request:
        self._last = error
        self._tried.append(target_id)
        self._failed.append(f"{target_id} ({_brief(error)})")
        client = self._client
        deadline = self._started + self._limit
        try:
            client._may_retry(error, self._tried, self._failed, deadline, self._limit)
        except EasClientError as exc:
            client._observe(exc, self._started, self._retries)
            raise
        return self._attempt()

    def failed(self, error: EasClientError) -> Request:
        """The transport failed (opening the stream or reading it)."""
        endpoint = self._endpoint
        if endpoint is None:
            raise error  # the call already ended (with this error, raised here before)
        target = endpoint.target
        if self._events:
            # Pinned: the tokens handed out came from this instance's generation.
            retryable = isinstance(error, ConnectError | TimeoutException)
            self._end(False if retryable else None, error)
            error.add_note(
                f"the stream from instance {target.id} of service {self._client._name!r} "
                f"failed after {self._events} event(s); a started stream is not retried"
            )
            raise error
        self._endpoint = None
        try:
            again = self._client._failed(endpoint, error)
        except EasClientError as exc:
            self._client._observe(exc, self._started, self._retries)
            raise
        return self._next_attempt(again, target.id)

    def refused(self, reply: Reply) -> Request:
        """The instance answered a status other than 200 (a 503 is retried)."""
        endpoint = self._endpoint
        assert endpoint is not None, "refused() after the call ended"
        self._endpoint = None
        try:
            error = self._client._settle(endpoint, reply, _not_a_stream)
        except EasClientError as exc:
            self._client._observe(exc, self._started, self._retries)
            raise
        assert error is not None
        return self._next_attempt(error, endpoint.target.id)

    def events(self, data: bytes) -> list[GenerateChunk]:
        """The events completed by ``data``, a piece of the body (none after the final one).

        Raises:
            ServerError: an ``{"error": ...}`` event: the generation failed on the server.
            ProtocolError: a malformed event.
        """
        if self.done:
            return []
        try:
            chunks = [parse_chunk(event) for event in self._decoder.feed(data)]
        except ServerError as exc:
            self._end(True, exc)  # the instance answered; the request failed
            raise
        except EasClientError as exc:
            self._end(None, exc)
            raise
        for i, chunk in enumerate(chunks):
            if chunk.finish_reason is not None:
                del chunks[i + 1 :]
                self.done = True
                self._end(True, None)
                break
        self._events += len(chunks)
        return chunks

    def ended(self) -> Request:
        """The body ended before the final event: the connection was cut."""
        endpoint = self._endpoint
        assert endpoint is not None and not self.done, "ended() after the call ended"
        url = _generate_url(endpoint.target.url, True)
        cut = "in the middle of an event" if self._decoder.pending else "before its final event"
        return self.failed(
            ConnectError(f"the stream of {url} ended {cut}, after {self._events} event(s)", url=url)
        )

    def close(self) -> None:
        """The shell is done with the call (the caller may have stopped reading early)."""
        endpoint, self._endpoint = self._endpoint, None
        if endpoint is not None:
            self._client._balancer.release(endpoint, None)
