"""``EasClient``: the blocking client. I/O only; every decision is made in ``_base``.

``generate_stream`` reads the answer as it arrives, which the transports of ``infer`` (one reply
per request) do not do: its streams go through an ``httpx.Client`` of their own (over the
injected ``transport=`` when there is one), made on the first stream.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Generator, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

import httpx
import numpy as np

from ._balancer import RetryBudget
from ._base import _BaseEasClient, _StreamCall
from ._errors import EasClientError
from ._generate import GenerateChunk, GenerateRequest, GenerateResult
from ._httpx import HttpxTransport, _error
from ._instances import Instances
from ._metrics import ClientMetrics
from ._transport import Reply, Request, Transport

if TYPE_CHECKING:
    from config_store import ConfigStore

__all__ = ["EasClient"]

T = TypeVar("T")


def _timeouts(request: Request) -> httpx.Timeout:
    return httpx.Timeout(
        connect=request.connect, read=request.timeout, write=request.timeout, pool=request.pool
    )


@contextlib.contextmanager
def _opened(http: httpx.Client, request: Request) -> Iterator[httpx.Response]:
    """POST ``request`` and hold its answer open (closed on exit: the server sees the
    disconnect when the body was not read to its end)."""
    try:
        response = http.send(
            http.build_request(
                "POST",
                request.url,
                content=request.body,
                headers=request.headers,
                timeout=_timeouts(request),
            ),
            stream=True,
        )
    except httpx.HTTPError as exc:
        raise _error(exc, request.url) from exc
    try:
        yield response
    finally:
        response.close()


def _pieces(response: httpx.Response, url: str) -> Iterator[bytes]:
    """The body as it arrives, with our errors."""
    try:
        yield from response.iter_raw()
    except httpx.HTTPError as exc:
        raise _error(exc, url) from exc


def _whole(response: httpx.Response, url: str) -> Reply:
    try:
        content = response.read()
    except httpx.HTTPError as exc:
        raise _error(exc, url) from exc
    return Reply(response.status_code, response.headers, content)


class _Streams:
    """The ``httpx.Client`` of ``generate_stream``, made on first use (thread-safe)."""

    def __init__(self, transport: httpx.BaseTransport | None, limit: int):
        self._transport = transport
        self._limit = limit
        self._http: httpx.Client | None = None
        self._lock = threading.Lock()

    def http(self) -> httpx.Client:
        http = self._http
        if http is None:
            with self._lock:
                if self._http is None:
                    limits = httpx.Limits(
                        max_connections=None, max_keepalive_connections=self._limit
                    )
                    self._http = httpx.Client(
                        transport=self._transport, limits=limits, trust_env=False
                    )
                http = self._http
        return http

    def close(self) -> None:
        with self._lock:
            http, self._http = self._http, None
        if http is not None:
            http.close()


class EasClient(_BaseEasClient):
    """Calls one model service over the Open Inference Protocol, with client-side balancing.

    Instances come from the config store (``store=`` + ``service=``: the set follows
    registrations and deregistrations as they happen) or from a fixed ``urls=`` list. Each call
    goes to one instance chosen by weighted least-outstanding-requests (power of two choices);
    connect errors, dropped connections, timeouts with time left and 503s are retried on another
    instance; instances that keep failing are ejected for a while. Thread-safe: share one client
    between threads. A generative (seq2seq) model also answers :meth:`generate` (the whole
    answer) and :meth:`generate_stream` (a chunk per token), balanced and retried the same way
    (a stream only until its first chunk).

    ```python
    with EasClient(store="zk://zk1:2181/autoai", service="intent-cls-3") as client:
        out = client.infer({"input_ids": ids, "attention_mask": mask})
        out["logits"]
    ```

    Args:
        store: a ``ConfigStore`` (shared: not closed by the client) or a store URL (opened here,
            closed by :meth:`close`).
        service: the service to discover (with ``store``; ``NAME-VERSION`` by default on
            eas-server). Also names the service in errors.
        urls: fixed instance base URLs (``http://host:port``), instead of ``store``.
        model: model name in the OIP path; default: each instance's registered ``model``, else
            ``service``. Needed with ``urls`` unless ``service`` is given.
        version: model version in the path; default: each instance's registered ``version``;
            ``None`` with ``urls``: the unversioned path ``/v2/models/{model}/infer``.
        token: sent as ``Authorization: Bearer <token>``.
        timeout: seconds for a whole call, retries included (per call: ``infer(timeout=)``).
        binary: send and ask for tensors with the binary extension (fast); JSON when False.
        max_attempts: most instances tried per call (1 = no retry).
        retry_budget: bounds retries to a share of calls (default ``RetryBudget()``: 20% plus
            10 per second); share one between clients to bound them together.
        transport: an ``httpx.BaseTransport`` to use instead of real connections (tests:
            ``httpx.MockTransport``); ``max_connections_per_instance`` then does not apply.
        max_connections_per_instance: connections kept per instance; more concurrent calls to
            one instance wait for a free connection (within their deadline).
        metrics: where to count calls (duration, outcome, retries); none by default.
        labels: ``model``, ``version``, ``processor`` label values of those metrics; default the
            ``model`` (else ``service``), the ``version`` (else ``""``) and ``"onnx"``.
        eject_after: consecutive failures (transport errors, 503) that eject an instance.
        eject_for: first ejection's length, seconds; doubles on every repeat (up to 60 s).
        attempt_timeout: seconds one attempt may wait for its answer before the call moves to
            another instance (default: the whole remaining deadline). Set it below ``timeout`` so
            that a hung instance (it accepts connections but never answers) costs one attempt,
            not the call.

    Raises:
        ValueError: an argument is missing, conflicting or out of range.
        config_store.ConfigStoreError: ``store`` is a URL that cannot be opened.
    """

    _kind = "EasClient"

    def __init__(
        self,
        *,
        store: ConfigStore | str | None = None,
        service: str | None = None,
        urls: Sequence[str] | None = None,
        model: str | None = None,
        version: str | None = None,
        token: str | None = None,
        timeout: float = 5.0,
        binary: bool = True,
        max_attempts: int = 3,
        retry_budget: RetryBudget | None = None,
        transport: httpx.BaseTransport | None = None,
        max_connections_per_instance: int = 64,
        metrics: ClientMetrics | None = None,
        labels: Mapping[str, str] | None = None,
        eject_after: int = 3,
        eject_for: float = 5.0,
        attempt_timeout: float | None = None,
    ):
        super().__init__(
            store=store,
            service=service,
            urls=urls,
            model=model,
            version=version,
            token=token,
            timeout=timeout,
            binary=binary,
            max_attempts=max_attempts,
            retry_budget=retry_budget,
            max_connections_per_instance=max_connections_per_instance,
            metrics=metrics,
            labels=labels,
            eject_after=eject_after,
            eject_for=eject_for,
            attempt_timeout=attempt_timeout,
        )
        self._transport: Transport = (
            Instances(self._max_connections)
            if transport is None
            else HttpxTransport.over(transport)
        )
        self._streams = _Streams(transport, self._max_connections)
        try:
            self._start_discovery()
        except BaseException:
            self._transport.close()
            raise

    def infer(
        self,
        inputs: Mapping[str, np.ndarray[Any, Any]],
        outputs: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray[Any, Any]]:
        """Run the model on ``inputs``.

        Args:
            inputs: input name -> numpy array (the datatype comes from the dtype).
            outputs: output names to fetch; ``None`` for all.
            timeout: seconds for this call, retries included (default: the client's).

        Returns:
            Output name -> array. Binary outputs are read-only views of the answer's body.

        Raises:
            InvalidRequest: 400, the server refused the inputs (never retried).
            Unauthorized: 401/403, missing or wrong token.
            ModelNotFound: 404, the instance does not serve this model or version.
            ServiceUnavailable: 503 from the last instance tried (``retry_after`` set).
            TimeoutException: from the last instance tried.
            NoInstanceAvailable: discovery knows no instance to call, or the last one tried
                refused the connection (chained to its ``ConnectError``).
            ServerError: another status (500).
            ProtocolError: an input OIP cannot carry, or a malformed answer.

            When retries ran out, the error's notes name the instances tried and why it stopped.
        """
        return self._drive(self._call(inputs, outputs, timeout))

    def generate(
        self,
        audio: object,
        *,
        max_new_tokens: int | None = None,
        num_beams: int = 1,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> GenerateResult:
        """Transcribe ``audio`` with a generative (seq2seq) model: the whole answer at once.

        Args:
            audio: one utterance, 1-D float samples in [-1, 1] at the model's sample rate (16 kHz
                for Whisper), a numpy array or a list of floats; sent as float32. Integer PCM is
                refused: scale it first (``int16 / 32768``).
            max_new_tokens: the most output tokens (default: the model's).
            num_beams: 1 = greedy; 2 to 4 = beam search of that width.
            timeout_s: the generation's deadline in seconds, retries included (default: the
                client's ``timeout``). The server ends the answer there with the tokens so far
                and ``finish_reason`` ``"deadline"``; the client waits one second more for that
                answer. ``attempt_timeout`` does not apply to generation.
            request_id: sent as the request's ``id``; echoed in the result.

        Returns:
            The tokens, their text (with a tokenizer), why the generation ended, and the server's
            timing.

        Raises:
            ProtocolError: ``audio`` is not 1-D finite float samples (nothing was sent), or a
                malformed answer.
            ValueError: ``max_new_tokens``, ``num_beams`` or ``timeout_s`` out of range.
            InvalidRequest: 400, the server refused the audio or the parameters (too long, too
                many tokens, too many beams; never retried); or the model is not generative.
            ServiceUnavailable: 503 from the last instance tried: queue full, or the deadline
                passed while waiting.
            ModelNotFound, Unauthorized, TimeoutException, NoInstanceAvailable, ServerError:
                as for :meth:`infer`; connect errors, timeouts with time left and 503s are retried
                on another instance like ``infer``'s.
        """
        request, limit = self._generate_request(
            audio, max_new_tokens, num_beams, request_id, timeout_s
        )
        return self._drive(self._generate_call(request, limit))

    def generate_stream(
        self,
        audio: object,
        *,
        max_new_tokens: int | None = None,
        num_beams: int = 1,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> Generator[GenerateChunk, None, None]:
        """Transcribe ``audio``, the tokens handed out as the server makes them.

        ```python
        with contextlib.closing(client.generate_stream(audio, max_new_tokens=64)) as stream:
            for chunk in stream:
                print(chunk.text or chunk.tokens, end="", flush=True)
        ```
        One chunk per token (beam search: one chunk with every token, at the end), then a final
        chunk with no tokens and the ``finish_reason``. Closing the iterator before its end
        (``close()``, leaving ``contextlib.closing``, or dropping it after a ``break``) closes
        the connection, and the server stops the generation.

        Before the first chunk, a connect error, a timeout with time left or a 503 is retried
        on another instance as for :meth:`generate`; once a chunk was handed out, the stream
        stays on its instance and a failure is raised. The deadline counts from the first
        ``next()``. Arguments and errors: see :meth:`generate` (checked here, before anything
        is sent); also ``ServerError`` (500) when the server reports a failure in the stream.
        """
        request, limit = self._generate_request(
            audio, max_new_tokens, num_beams, request_id, timeout_s
        )
        return self._stream(request, limit)

    def _stream(
        self, request: GenerateRequest, limit: float
    ) -> Generator[GenerateChunk, None, None]:
        call = _StreamCall(self, request, limit)
        try:
            attempt = call.first()
            http = self._streams.http()
            while True:
                try:
                    with _opened(http, attempt) as response:
                        if response.status_code != 200:
                            attempt = call.refused(_whole(response, attempt.url))
                            continue
                        for piece in _pieces(response, attempt.url):
                            yield from call.events(piece)
                        if call.done:
                            return
                        attempt = call.ended()
                except EasClientError as exc:  # the transport's (or the call's own, raised again)
                    if call.done:
                        return  # the answer was whole: reading on to the end failed
                    attempt = call.failed(exc)
        finally:
            call.close()

    def _drive(self, call: Generator[Request, Reply, T]) -> T:
        """Run a call loop of ``_base`` over the transport."""
        transport = self._transport
        if self._retired:
            for origin in self._reapable():
                transport.discard(origin)
        try:
            request = next(call)
            while True:
                try:
                    reply = transport.send(request)
                except EasClientError as exc:  # the transport's, for the call loop to judge
                    request = call.throw(exc)
                else:
                    request = call.send(reply)
        except StopIteration as done:
            return cast(T, done.value)
        finally:
            call.close()

    def close(self) -> None:
        """Stop discovery, close the store if the client opened it, close connections.

        Idempotent; calls after it raise ``RuntimeError``.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._stop_discovery()
        finally:
            try:
                self._transport.close()
            finally:
                self._streams.close()

    def __enter__(self) -> EasClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
