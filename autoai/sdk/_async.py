"""``AsyncModelClient``: the asyncio twin of ``ModelClient`` (same routing, awaiting clients)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Mapping, Sequence
from types import TracebackType
from typing import Any

from eas_client import EasClientError, GenerateChunk, GenerateResult

from ._base import Inputs, Outputs, _BaseModelClient, _Routing
from ._routes import Route, RouteTable

__all__ = ["AsyncModelClient"]

log = logging.getLogger("autoai.sdk")


class AsyncModelClient(_BaseModelClient):
    """Call models by name from asyncio code.

    ```python
    async with AsyncModelClient(store_url) as client:
        out = await client.predict("intent-cls", inputs)
    ```
    The first call of a model waits for its route table in a worker thread; later calls never
    block the event loop. Shadow calls are tasks of the caller's loop, off the caller's latency.
    Takes the same arguments as ``ModelClient`` (``shadow_concurrency`` instead of threads).
    """

    _asynchronous = True

    def __init__(self, store: Any, *, shadow_concurrency: int = 8, **options: Any) -> None:
        super().__init__(store, **options)
        self._shadow_limit = shadow_concurrency
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self._closing: set[asyncio.Task[None]] = set()

    async def _prepare(self, model: str) -> None:
        """Subscribe to ``model`` off the loop on its first call; close retired clients."""
        sub = self._subscriptions.get(model)
        if sub is None or not sub.first.is_set():
            await asyncio.to_thread(self._subscribe, model)
        if self._retired:
            for stale in self._due():
                task = asyncio.get_running_loop().create_task(stale.aclose())
                self._closing.add(task)  # kept referenced until done, awaited on close
                task.add_done_callback(self._closing.discard)

    async def predict(
        self,
        model: str,
        inputs: Inputs,
        *,
        key: str | bytes | None = None,
        version: str | None = None,
        outputs: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> Outputs:
        """Run ``model`` on ``inputs`` (see ``ModelClient.predict``: arrays, or text for BYTES
        inputs; BYTES outputs come back as ``str``)."""
        await self._prepare(model)
        routing, route, arrays = self._route(model, inputs, key, version)
        client = self._client(routing.table, route)
        result = self._finish(await client.infer(arrays, outputs, timeout))
        shadow = self._shadow_route(routing, version)
        if shadow is not None:
            self._mirror(routing, shadow, arrays, outputs, result)
        return result

    async def generate(
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
        """Transcribe ``audio``, routed as ``predict``; see ``ModelClient.generate`` (shadow
        calls are tasks of the caller's loop)."""
        await self._prepare(model)
        routing, route, options = self._generate_route(
            model, key, version, max_new_tokens, num_beams, timeout_s, request_id
        )
        table = routing.table
        try:
            result: GenerateResult = await self._client(table, route).generate(audio, **options)
        except EasClientError as exc:
            fallback = self._fallback(table, route, exc)
            if fallback is None:
                raise
            result = await self._client(table, fallback).generate(audio, **options)
        shadow = self._shadow_route(routing, version)
        if shadow is not None:
            self._mirror_generate(table, shadow, audio, options, result)
        return result

    async def generate_stream(
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
    ) -> AsyncGenerator[GenerateChunk, None]:
        """Transcribe ``audio``, the tokens as they come: ``async for chunk in
        client.generate_stream(model, audio)``; see ``ModelClient.generate_stream``.

        Routing waits for the model's route table without blocking the loop, so here every
        error, the route's and the arguments' included, is raised by the first ``__anext__``.
        ``aclose()`` (or ``contextlib.aclosing``) closes the connection at once.
        """
        await self._prepare(model)
        routing, route, options = self._generate_route(
            model, key, version, max_new_tokens, num_beams, timeout_s, request_id
        )
        table = routing.table
        handed = False
        async with contextlib.aclosing(
            self._client(table, route).generate_stream(audio, **options)
        ) as stream:
            try:
                async for chunk in stream:
                    handed = True
                    yield chunk
                return
            except EasClientError as exc:
                fallback = None if handed else self._fallback(table, route, exc)
                if fallback is None:
                    raise
        async with contextlib.aclosing(
            self._client(table, fallback).generate_stream(audio, **options)
        ) as stream:
            async for chunk in stream:
                yield chunk

    def _mirror_generate(
        self,
        table: RouteTable,
        route: Route,
        audio: object,
        options: dict[str, Any],
        primary: GenerateResult,
    ) -> None:
        if len(self._shadow_tasks) >= self._shadow_limit:
            self._count_shadow(table, route, "dropped")
            return
        client = self._client(table, route)

        async def run() -> None:
            try:
                shadow: GenerateResult | None = await client.generate(audio, **options)
            except Exception as exc:
                log.warning("shadow call to %s %s failed: %s", table.model, route.version, exc)
                shadow = None
            self._compare_generated(table, route, primary, shadow)

        task = asyncio.get_running_loop().create_task(run())
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    def _mirror(
        self,
        routing: _Routing,
        route: Route,
        inputs: Mapping[str, Any],
        outputs: Sequence[str] | None,
        primary: Outputs,
    ) -> None:
        table = routing.table
        if len(self._shadow_tasks) >= self._shadow_limit:
            self._count_shadow(table, route, "dropped")
            return
        client = self._client(table, route)

        async def run() -> None:
            try:
                shadow: Outputs | None = await client.infer(inputs, outputs, None)
            except Exception as exc:
                log.warning("shadow call to %s %s failed: %s", table.model, route.version, exc)
                shadow = None
            self._compare(table, route, primary, shadow)

        task = asyncio.get_running_loop().create_task(run())
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def aclose(self) -> None:
        """Stop watching, wait for shadow calls, close the clients (and an owned store)."""
        clients = self._cancel()
        if self._shadow_tasks or self._closing:
            await asyncio.gather(*self._shadow_tasks, *self._closing, return_exceptions=True)
        for client in clients:
            await client.aclose()
        await asyncio.to_thread(self._close_store)

    async def __aenter__(self) -> AsyncModelClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
