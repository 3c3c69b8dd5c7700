"""The front end's side of the link: an ``OipApp`` whose requests go to the executor.

Everything up to a checked request (HTTP parsing, the codec, the signature checks, the token)
and everything after (encoding, writing) happens here; the executor only queues, batches and
runs. Finished requests are reported to the executor in batches (``OBSERVE``), so the instance's
``/metrics`` and ``/stats``, which the executor answers, count every front end.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any, cast

import numpy as np
import orjson

from .. import _errors
from .._app import OipApp
from .._errors import EasServerError, Unavailable
from .._model import ModelInfo
from ..batching import BatchResult
from ..processors import TensorSpec
from ._wire import Buffer, FrameReader, Kind, decode_tensors, encode_tensors, frame

__all__ = ["ExecutorGone", "ExecutorLink", "FrontendApp", "model_from_json", "model_to_json"]

log = logging.getLogger("eas_server.frontends")

_ERRORS: dict[str, type[EasServerError]] = {
    name: cls
    for name in _errors.__all__
    if isinstance(cls := getattr(_errors, name), type) and issubclass(cls, EasServerError)
}


class ExecutorGone(Unavailable):
    """The executor of this instance exited: nothing can run here any more."""


def model_to_json(model: ModelInfo) -> dict[str, Any]:
    def specs(items: tuple[TensorSpec, ...]) -> list[list[Any]]:
        return [[s.name, s.datatype, list(s.shape)] for s in items]

    return {
        "name": model.name,
        "version": model.version,
        "inputs": specs(model.inputs),
        "outputs": specs(model.outputs),
        "batchable": model.batchable,
        "max_request_rows": model.max_request_rows,
        "platform": model.platform,
        "backend": model.backend,
    }


def model_from_json(doc: dict[str, Any]) -> ModelInfo:
    def specs(items: list[list[Any]]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(name, datatype, tuple(shape)) for name, datatype, shape in items)

    return ModelInfo(
        name=doc["name"],
        version=doc["version"],
        inputs=specs(doc["inputs"]),
        outputs=specs(doc["outputs"]),
        batchable=doc["batchable"],
        max_request_rows=doc["max_request_rows"],
        platform=doc["platform"],
        backend=doc["backend"],
    )


class ExecutorLink(asyncio.Protocol):
    """The front end's end of its socket to the executor: requests out, answers in.

    Writes are gathered and flushed once per event-loop turn (one ``writev`` for every frame
    produced in that turn).
    """

    def __init__(self) -> None:
        self.hello: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.stopped = asyncio.Event()
        self.lost = asyncio.Event()
        self.app: FrontendApp | None = None
        self._reader = FrameReader()
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._out: list[Buffer] = []
        self._observed: list[list[Any]] = []
        self._flushing = False

    # ----------------------------------------------------------------------------- protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.lost.set()
        gone = ExecutorGone("the executor of this instance is gone")
        if not self.hello.done():
            self.hello.set_exception(gone)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(gone)
        self._pending.clear()
        if self.app is not None:
            self.app.ready = False

    def data_received(self, data: bytes) -> None:
        for kind, rid, payload in self._reader.feed(data):
            if kind == Kind.RESULT:
                future = self._pending.pop(rid, None)
                if future is not None and not future.done():
                    meta, arrays = decode_tensors(payload)
                    future.set_result(BatchResult(arrays, meta["q"], meta["c"], meta["b"]))
            elif kind == Kind.ERROR:
                future = self._pending.pop(rid, None)
                if future is not None and not future.done():
                    doc = orjson.loads(payload)
                    future.set_exception(_ERRORS.get(doc["e"], EasServerError)(doc["m"]))
            elif kind == Kind.ANSWER:
                future = self._pending.pop(rid, None)
                if future is not None and not future.done():
                    future.set_result(bytes(payload))
            elif kind == Kind.STATE:
                if self.app is not None:
                    self.app.ready = bytes(payload) == b"1"
            elif kind == Kind.HELLO:
                if not self.hello.done():
                    self.hello.set_result(orjson.loads(payload))
            elif kind == Kind.STOP:
                self.stopped.set()

    # ------------------------------------------------------------------------------ sending

    def send(self, buffers: list[Buffer]) -> None:
        self._out.extend(buffers)
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flushing = False
        if self._observed:
            self._out.extend(frame(Kind.OBSERVE, 0, orjson.dumps(self._observed)))
            self._observed = []
        if self._transport is not None and self._out:
            self._transport.writelines(self._out)
        self._out = []

    def observe(self, entry: list[Any]) -> None:
        """Report a finished request with the next flush."""
        self._observed.append(entry)
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def call(self, kind: Kind, payload: list[Buffer]) -> Any:
        """Send a request frame and wait for its answer (RESULT, ERROR or ANSWER)."""
        if self._transport is None:
            raise ExecutorGone("the executor of this instance is gone")
        rid = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        self.send(frame(kind, rid, *payload))
        try:
            return await future
        except asyncio.CancelledError:
            if self._pending.pop(rid, None) is not None:
                self.send(frame(Kind.CANCEL, rid))
            raise

    def listening(self, pid: int) -> None:
        self.send(frame(Kind.LISTENING, 0, orjson.dumps({"pid": pid})))


class FrontendApp(OipApp):
    """The OIP application of a front end process: requests go to the executor over ``link``."""

    def __init__(self, link: ExecutorLink, **options: Any):
        super().__init__(**options)
        self._link = link
        link.app = self

    async def submit(
        self,
        inputs: dict[str, np.ndarray],
        *,
        priority: int,
        timeout_s: float | None,
        outputs: frozenset[str] | None,
    ) -> BatchResult:
        meta = {"p": priority, "t": timeout_s, "o": None if outputs is None else sorted(outputs)}
        result: BatchResult = await self._link.call(Kind.INFER, encode_tensors(meta, inputs))
        return result

    def on_success(self, total_s: float, queue_s: float, compute_s: float) -> None:
        self._link.observe([None, total_s, queue_s, compute_s])

    def on_failure(self, outcome: str, total_s: float) -> None:
        self._link.observe([outcome, total_s])

    async def stats_document(self) -> bytes:
        answer: bytes = await self._link.call(Kind.QUERY, [b"stats"])
        return answer

    async def metrics_document(self) -> bytes:
        answer: bytes = await self._link.call(Kind.QUERY, [b"metrics"])
        return answer
