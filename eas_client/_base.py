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
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final
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
        """The call loop: yields requests, is sent their replies (or has the transport's error
        thrown in), returns the outputs or raises."""
        if self._closed:
            raise RuntimeError(f"this {self._kind} is closed")
        started = time.perf_counter()
        limit = self._timeout if timeout is None else _number(timeout, "timeout", minimum=1e-6)
        deadline = started + limit
        retries = 0
        try:
            body, headers = self._encode(inputs, outputs)
            self._budget.deposit()
            tried: list[str] = []  # instance ids, never picked again in this call
            failed: list[str] = []  # "id (what went wrong)", for the note of the final error
            last: EasClientError | None = None
            while True:
                endpoint = self._next(tried, failed, last)
                if last is not None:
                    retries += 1
                target = endpoint.target
                remaining = deadline - time.perf_counter()
                wait = (
                    remaining
                    if self._attempt_timeout is None
                    else min(remaining, self._attempt_timeout)
                )
                request = Request(
                    target.url,
                    target.origin,
                    body,
                    headers,
                    timeout=wait,
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
                    result = self._settle(endpoint, reply)
                    if not isinstance(result, EasClientError):
                        if self._metrics is not None:
                            self._metrics.observe("ok", time.perf_counter() - started, retries)
                        return result
                    last = result
                tried.append(target.id)
                failed.append(f"{target.id} ({_brief(last)})")
                if len(tried) >= self._max_attempts:
                    raise self._give_up(last, failed, f"max_attempts={self._max_attempts} reached")
                if deadline - time.perf_counter() < _MIN_ATTEMPT_S:
                    raise self._give_up(last, failed, f"the {limit:g} s deadline has passed")
        except EasClientError as exc:
            if self._metrics is not None:
                self._metrics.observe(_outcome(exc), time.perf_counter() - started, retries)
            raise

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

    def _settle(self, endpoint: Endpoint, reply: Reply) -> Outputs | EasClientError:
        """Release ``endpoint`` with the verdict of its reply; return the outputs or a retryable
        error (503), raise the errors that must not be retried."""
        status = reply.status_code
        self._balancer.release(endpoint, status != 503)
        if status == 200:
            return self._decode(reply)
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
