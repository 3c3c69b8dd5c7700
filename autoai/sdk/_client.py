"""``ModelClient``: blocking calls routed by the published route tables."""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Generator, Mapping, Sequence
from types import TracebackType
from typing import Any

from config_store import ConfigStore
from eas_client import EasClientError, GenerateChunk, GenerateResult

from ._base import Inputs, Outputs, _BaseModelClient, _Routing
from ._routes import Route, RouteTable

__all__ = ["ModelClient"]

log = logging.getLogger("autoai.sdk")


class ModelClient(_BaseModelClient):
    """Call models by name; the route table decides version, service and client.

    ```python
    with ModelClient("zk://127.0.0.1:2181/autoai") as client:
        out = client.predict("intent-cls", {"input_ids": ids, "attention_mask": mask})
        out = client.predict("intent", {"text": ["turn on the lights", "play jazz"]})
        out["label"].tolist()                                        # ['lights_on', 'music']
        out = client.predict("intent-cls", inputs, key=user_id)     # sticky when the table says so
        out = client.predict("intent-cls", inputs, version="3")     # pinned
    ```
    Thread-safe: share one client between threads. Shadow calls run on a small pool of threads,
    off the caller's latency; when they fall behind, extra shadow calls are dropped (counted).

    Args: see ``_BaseModelClient.__init__`` (``store``, ``token``, ``timeout``, ``registry``,
    ``subscribe_timeout``, ``snapshot_dir``, ``decode_bytes``, and ``EasClient`` options);
    ``shadow_threads`` sizes the shadow pool.
    """

    _asynchronous = False

    def __init__(
        self,
        store: str | ConfigStore,
        *,
        token: str | None = None,
        timeout: float = 5.0,
        shadow_threads: int = 2,
        **options: Any,
    ) -> None:
        super().__init__(store, token=token, timeout=timeout, **options)
        self._shadow_pool = concurrent.futures.ThreadPoolExecutor(
            shadow_threads, thread_name_prefix="autoai-shadow"
        )
        # Calls waiting for or running on the pool; beyond this, shadow calls are dropped.
        self._shadow_slots = threading.BoundedSemaphore(4 * shadow_threads)

    def predict(
        self,
        model: str,
        inputs: Inputs,
        *,
        key: str | bytes | None = None,
        version: str | None = None,
        outputs: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> Outputs:
        """Run ``model`` on ``inputs`` through the route the table gives.

        Args:
            model: the published model name.
            inputs: input name -> array (batch first), checked against the table's signature.
                A BYTES input also takes Python text: a list of ``str`` (one per row), a single
                ``str`` (a batch of one), ``bytes`` alike, or a numpy ``str_``/``bytes_``/
                ``object`` array; ``str`` is sent as UTF-8. No tokenizer runs here: a pipeline
                model tokenizes on the server.
            key: the caller's sticky key (user id, session); used when the table sets
                ``sticky_key``, so the same key always reaches the same version.
            version: pin a version (bypasses weights and shadow).
            outputs: output names to return (default: all).
            timeout: seconds for this call, retries included.

        Returns:
            Output name -> array. A BYTES output is a numpy ``object`` array of ``str`` when every
            element is UTF-8 (labels, JSON slot spans); one with any element that is not UTF-8
            stays an ``object`` array of ``bytes``, as does every BYTES output when the client
            was made with ``decode_bytes=False``.

        Raises:
            ModelNotFound: the model is not published (the message lists what is).
            VersionNotFound: ``version`` is not in the route table.
            InvalidInput: the inputs do not match the signature, or a BYTES input holds
                something other than text (nothing was sent).
            eas_client.NoInstanceAvailable: no live instance answered within the retry budget.
            eas_client.EasClientError: the other transport and server errors.
        """
        if self._retired:
            for stale in self._due():
                stale.close()
        routing, route, arrays = self._route(model, inputs, key, version)
        result = self._finish(self._client(routing.table, route).infer(arrays, outputs, timeout))
        shadow = self._shadow_route(routing, version)
        if shadow is not None:
            self._mirror(routing, shadow, arrays, outputs, result)
        return result

    def generate(
        self,
        model: str,
        audio: object,
        *,
        key: str | bytes | None = None,
        version: str | None = None,
        max_new_tokens: int | None = None,
        num_beams: int = 1,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> GenerateResult:
        """Transcribe ``audio`` with a generative model, routed as ``predict`` is.

        The route table's split (or ``key``, or ``version``) picks the version; the version's
        client picks the instance and retries elsewhere (``eas_client.EasClient.generate``). A
        shadow route, when the table has one, gets a mirrored call off the caller's latency,
        counted as agreeing when it produced the same tokens. A blade route whose service
        cannot answer falls back to its ``fallback_version``.

        Args:
            model: the published model name.
            audio: 1-D float samples in [-1, 1] at the model's rate (16 kHz for Whisper).
            key, version: as for ``predict``.
            max_new_tokens, num_beams, timeout_s, request_id: see
                ``eas_client.EasClient.generate``.

        Returns:
            ``eas_client.GenerateResult``: tokens, text, finish_reason, output_tokens, timing;
            its ``model_version`` says which version answered.

        Raises:
            ModelNotFound, VersionNotFound: as for ``predict``.
            eas_client.ProtocolError: audio that is not 1-D finite float samples (nothing sent).
            eas_client.EasClientError: the transport and server errors of
                ``EasClient.generate``.
        """
        if self._retired:
            for stale in self._due():
                stale.close()
        routing, route, options = self._generate_route(
            model, key, version, max_new_tokens, num_beams, timeout_s, request_id
        )
        table = routing.table
        try:
            result: GenerateResult = self._client(table, route).generate(audio, **options)
        except EasClientError as exc:
            fallback = self._fallback(table, route, exc)
            if fallback is None:
                raise
            result = self._client(table, fallback).generate(audio, **options)
        shadow = self._shadow_route(routing, version)
        if shadow is not None:
            self._mirror_generate(table, shadow, audio, options, result)
        return result

    def generate_stream(
        self,
        model: str,
        audio: object,
        *,
        key: str | bytes | None = None,
        version: str | None = None,
        max_new_tokens: int | None = None,
        num_beams: int = 1,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> Generator[GenerateChunk, None, None]:
        """Transcribe ``audio``, the tokens as they come; routed as ``generate``.

        ```python
        with contextlib.closing(client.generate_stream("whisper", audio)) as stream:
            for chunk in stream:
                print(chunk.text, end="", flush=True)
        ```
        The version is chosen once; the stream may move to another instance of it (or to a
        blade route's fallback version) only before its first chunk, then stays where it is.
        Streams are never mirrored to a shadow route. Closing the iterator early closes the
        connection and the server stops the generation. The route, the version and the
        arguments are checked here; see ``eas_client.EasClient.generate_stream`` for the rest.
        """
        if self._retired:
            for stale in self._due():
                stale.close()
        routing, route, options = self._generate_route(
            model, key, version, max_new_tokens, num_beams, timeout_s, request_id
        )
        stream = self._client(routing.table, route).generate_stream(audio, **options)
        return self._follow(stream, routing.table, route, audio, options)

    def _follow(
        self,
        stream: Generator[GenerateChunk, None, None],
        table: RouteTable,
        route: Route,
        audio: object,
        options: dict[str, Any],
    ) -> Generator[GenerateChunk, None, None]:
        """``stream``'s chunks; a failure before the first one may go to the fallback route."""
        with contextlib.closing(stream):
            handed = False
            try:
                for chunk in stream:
                    handed = True
                    yield chunk
                return
            except EasClientError as exc:
                fallback = None if handed else self._fallback(table, route, exc)
                if fallback is None:
                    raise
        # yield from closes the fallback's stream when this one is closed
        yield from self._client(table, fallback).generate_stream(audio, **options)

    def _mirror_generate(
        self,
        table: RouteTable,
        route: Route,
        audio: object,
        options: dict[str, Any],
        primary: GenerateResult,
    ) -> None:
        if not self._shadow_slots.acquire(blocking=False):
            self._count_shadow(table, route, "dropped")
            return
        client = self._client(table, route)

        def run() -> None:
            try:
                try:
                    shadow: GenerateResult | None = client.generate(audio, **options)
                except Exception as exc:
                    log.warning("shadow call to %s %s failed: %s", table.model, route.version, exc)
                    shadow = None
                self._compare_generated(table, route, primary, shadow)
            finally:
                self._shadow_slots.release()

        try:
            self._shadow_pool.submit(run)
        except RuntimeError:  # closed meanwhile
            self._shadow_slots.release()

    def _mirror(
        self,
        routing: _Routing,
        route: Route,
        inputs: Mapping[str, Any],
        outputs: Sequence[str] | None,
        primary: Outputs,
    ) -> None:
        table = routing.table
        if not self._shadow_slots.acquire(blocking=False):
            self._count_shadow(table, route, "dropped")
            return
        client = self._client(table, route)

        def run() -> None:
            try:
                try:
                    shadow: Outputs | None = client.infer(inputs, outputs, None)
                except Exception as exc:
                    log.warning("shadow call to %s %s failed: %s", table.model, route.version, exc)
                    shadow = None
                self._compare(table, route, primary, shadow)
            finally:
                self._shadow_slots.release()

        try:
            self._shadow_pool.submit(run)
        except RuntimeError:  # closed meanwhile
            self._shadow_slots.release()

    def close(self) -> None:
        """Stop watching, wait for running shadow calls, close the clients (and an owned store)."""
        clients = self._cancel()
        self._shadow_pool.shutdown(wait=True, cancel_futures=True)
        for client in clients:
            client.close()
        self._close_store()

    def __enter__(self) -> ModelClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
