"""Running one server: load and warm up the model, serve on a pre-bound socket, announce
``listening on http://HOST:PORT``, register in the store, and on SIGTERM deregister first, keep
serving until traffic stops, then drain and exit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from importlib import metadata
from types import FrameType
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry

from ._app import EasApp
from ._metrics import ServerMetrics
from ._model import ModelInfo
from ._settings import ServerSettings
from .batching import DynamicBatcher
from .processors import Processor, create_processor

__all__ = ["build_app", "serve"]

log = logging.getLogger("eas_server")


def _version() -> str:
    try:
        return metadata.version("autoai")
    except metadata.PackageNotFoundError:
        return "0"


def build_app(
    settings: ServerSettings, processor: Processor, registry: CollectorRegistry | None = None
) -> EasApp:
    """Wire a loaded processor into an ASGI app (used by ``serve`` and by in-process tests)."""
    registry = registry if registry is not None else CollectorRegistry()
    metrics = ServerMetrics(
        registry,
        model=settings.name,
        version=settings.version,
        processor=processor.kind,
        server_version=_version(),
        insecure=settings.open_on_purpose,
    )
    max_batch = settings.max_batch_size
    batcher = DynamicBatcher(
        processor.run,
        max_batch_size=max_batch,
        max_delay_s=settings.max_batch_timeout_ms / 1000 if settings.batching else 0.0,
        merge=settings.batching,
        max_queue_size=settings.max_queue_size,
        workers=processor.workers,
        batchable=processor.batchable,
        priority_levels=settings.priority_levels,
        padding=processor.padding,
        observer=metrics,
    )
    model = ModelInfo(
        name=settings.name,
        version=settings.version,
        inputs=tuple(processor.inputs),
        outputs=tuple(processor.outputs),
        batchable=processor.batchable,
        max_request_rows=settings.max_request_rows,
        platform=processor.platform,
        backend=processor.backend,
    )
    levels = settings.priority_levels
    return EasApp(
        model=model,
        batcher=batcher,
        metrics=metrics,
        token=settings.token.get_secret_value() if settings.token else None,
        max_body_bytes=int(settings.max_body_mb * (1 << 20)),
        max_batch_size=max_batch,
        dynamic_batching={
            "preferred_batch_size": [],
            "max_queue_delay_microseconds": int(settings.max_batch_timeout_ms * 1000),
            "preserve_ordering": False,
            "priority_levels": levels,
            "default_priority_level": levels,
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": 0,
                "allow_timeout_override": True,
                "max_queue_size": settings.max_queue_size,
            },
        },
        instance_group=[
            {
                "name": settings.name,
                "kind": "KIND_GPU" if processor.device == "gpu" else "KIND_CPU",
                "count": processor.workers,
                "gpus": [0] if processor.device == "gpu" else [],
            }
        ],
        server_version=_version(),
    )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn, with SIGTERM turned into a drain instead of an immediate stop."""

    def __init__(self, config: uvicorn.Config, on_term: Any):
        super().__init__(config)
        self._on_term = on_term
        self._draining = False
        self._loop = asyncio.get_running_loop()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining or sig == signal.SIGINT:
            self.should_exit = True
            if self._draining:
                self.force_exit = True
            return
        self._draining = True
        self._loop.call_soon_threadsafe(self._on_term)


class _Runner:
    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.registration: Any = None
        self.store: Any = None
        self.app: EasApp | None = None
        self.server: _Server | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def run(self) -> int:
        s = self.settings
        processor = create_processor(
            s.processor,
            s.model,
            workers=s.workers,
            intra_op_threads=s.intra_op_threads,
            spinning=s.ort_spinning,
        )
        await asyncio.to_thread(processor.load)
        await asyncio.to_thread(processor.warmup)
        app = self.app = build_app(s, processor)
        sock = _bind(s.host, s.port)
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            http="httptools",
            proxy_headers=False,
            server_header=False,
            lifespan="off",
            access_log=False,
            log_level=s.log_level,
            timeout_keep_alive=60,
            timeout_graceful_shutdown=int(max(1, s.drain_timeout_s)),
            backlog=2048,
        )
        server = self.server = _Server(config, self._start_drain)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if serving.done():
                serving.result()
                return 1
            await asyncio.sleep(0.01)
        app.batcher.start()
        app.ready = True
        print(f"listening on http://{s.host}:{port}", flush=True)
        if s.store:
            await self._register(port, processor.kind)
        try:
            await serving
        finally:
            app.ready = False
            await app.batcher.close()
            processor.close()
            if self.store is not None:
                await asyncio.to_thread(self.store.close)
        return 0

    async def _register(self, port: int, kind: str) -> None:
        from config_store import open_store

        s = self.settings
        payload = {
            "model": s.name,
            "version": s.version,
            "processor": kind,
            "weight": s.weight,
            "started": time.time(),
            "pid": os.getpid(),
        }
        assert s.store is not None
        self.store = await asyncio.to_thread(open_store, s.store)
        self.registration = await asyncio.to_thread(
            self.store.register, s.service_name, s.host, port, payload
        )
        log.info("registered %s/%s:%d", s.service_name, s.host, port)

    def _start_drain(self) -> None:
        self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        """Deregister, keep serving until clients have moved away, then let uvicorn finish."""
        assert self.app is not None and self.server is not None
        self.app.ready = False
        if self.registration is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.registration.close)
        deadline = time.monotonic() + self.settings.drain_timeout_s
        quiet = 0.3  # no new request for this long: watchers have seen the deregistration
        await asyncio.sleep(min(quiet, self.settings.drain_timeout_s))
        while time.monotonic() < deadline:
            if not self.app.batcher.busy and time.monotonic() - self.app.last_request >= quiet:
                break
            await asyncio.sleep(0.05)
        await self.app.batcher.drain(max(0.0, deadline - time.monotonic()))
        self.server.should_exit = True


def serve(settings: ServerSettings) -> int:
    """Run until SIGTERM/SIGINT; returns the exit status."""
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    if settings.open_on_purpose:
        log.warning(
            "--insecure: serving on %s without a token; anyone who can reach it can call the model",
            settings.host,
        )
    runner = _Runner(settings)
    try:
        import uvloop

        return uvloop.run(runner.run())
    except ImportError:  # pragma: no cover - uvloop is in the server extra
        return asyncio.run(runner.run())
