"""Running one server: load and warm up the model, serve on a pre-bound socket, announce
``listening on http://HOST:PORT``, register in the store, and on SIGTERM deregister first, keep
serving until traffic stops, then drain and exit."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import socket
import time
from types import FrameType
from typing import Any

import uvicorn

from ._app import EasApp
from ._build import app_options, build_app
from ._cpu import plan_runtime, usable_cores
from ._http import uvicorn_config
from ._settings import ServerSettings
from .frontends import FrontendHub
from .processors import Processor, create_processor

__all__ = ["build_app", "serve"]

log = logging.getLogger("eas_server")


def plan_frontends(asked: int, device: str, cores: int, *, generative: bool = False) -> int:
    """Front end processes: as asked, else (0) one on a CPU runtime, where the runtime needs the
    cores, and on a GPU one per spare core up to 4 (one core is the executor's). A generative
    model always gets one: its engine lives in this process, and the front end processes carry
    whole requests and answers only, not streams of events."""
    if generative:
        return 1
    if asked:
        return asked
    return 1 if device == "cpu" else max(1, min(4, cores - 1))


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
        self.grpc: Any = None
        """The gRPC server (``--grpc-port``), or None."""
        self.host: Any = None
        """The hosted model versions (``--model-repository``), or None."""
        self.front: Any = None
        """The repository's app (``--model-repository``), or None."""
        self.hub: FrontendHub | None = None
        """The front end processes (``--frontends`` > 1), or None."""
        self._done = asyncio.Event()
        self._status = 0

    async def run(self) -> int:
        s = self.settings
        if s.model_repository is not None:
            return await self._run_repository()
        cpu = plan_runtime(
            usable_cores(),
            workers=s.workers,
            threads=s.intra_op_threads,
            spinning=s.ort_spinning,
            inline=None if s.handoff == "auto" else s.handoff == "inline",
        )
        processor = create_processor(
            s.processor,
            s.model,
            workers=s.workers,
            intra_op_threads=cpu.threads,
            spinning=cpu.spinning,
            **s.processor_options(),
        )
        await asyncio.to_thread(processor.load)
        await asyncio.to_thread(processor.warmup)
        if processor.device != "cpu":  # the device runs the batches: keep the loop free
            cpu = plan_runtime(
                cpu.cores,
                workers=s.workers,
                device=processor.device,
                threads=cpu.threads,
                spinning=cpu.spinning,
                inline=None if s.handoff == "auto" else s.handoff == "inline",
            )
        log.info("runtime plan: %s", cpu.reason)
        app = self.app = build_app(s, processor, inline=cpu.inline)
        if s.store:  # before "listening on": a store that cannot be opened fails the start
            try:
                self.store = await asyncio.to_thread(_open_store, s.store)
            except BaseException:
                processor.close()
                raise
        generative = app.generator is not None
        frontends = plan_frontends(s.frontends, processor.device, cpu.cores, generative=generative)
        if generative and s.frontends > 1:
            log.warning(
                "--frontends %d ignored: a generative model is served by one process (its "
                "generation engine runs here)",
                s.frontends,
            )
        elif generative:
            log.info("one HTTP process: a generative model's engine runs in this process")
        if frontends > 1:
            return await self._run_with_frontends(app, processor, frontends)
        started = await self._start_http(app)
        if started is None:
            return 1
        serving, port = started
        app.batcher.start()
        grpc_port = await self._start_grpc(app)
        app.ready = True
        self._say_listening(port, grpc_port)
        if s.store:
            await self._register(port, processor.kind, grpc_port)
        try:
            await serving
        finally:
            app.ready = False
            if self.grpc is not None:  # already stopped by a drain; at once otherwise
                await self.grpc.stop(0)
            await app.batcher.close()
            processor.close()
            if self.store is not None:
                await asyncio.to_thread(self.store.close)
        return 0

    async def _run_repository(self) -> int:
        """Serve a repository of model versions (``--model-repository``) from this process."""
        from prometheus_client import CollectorRegistry

        from .repository import ModelHost, RepositoryApp

        s = self.settings
        host = self.host = ModelHost(s, CollectorRegistry())
        front = self.front = RepositoryApp(
            host, token=s.token.get_secret_value() if s.token else None
        )
        try:
            if s.store:  # before "listening on": a store that cannot be opened fails the start
                self.store = await asyncio.to_thread(_open_store, s.store)
            await host.load_repository()
            if s.model:  # a single model beside the repository's
                config = {"model_path": s.model, "version": s.version, "processor": s.processor}
                if s.service:
                    config["service"] = s.service
                await host.load(s.name, json.dumps(config))
            started = await self._start_http(front)
            if started is None:
                return 1
            serving, port = started
            host.start()
            grpc_port = await self._start_grpc(front)
            front.ready = True
            self._say_listening(port, grpc_port)
            if s.store:
                host.announce = functools.partial(self._register_model, port, grpc_port)
                host.withdraw = _withdraw
                if s.service and not s.model:  # the instance itself: what orchestrators wait for
                    await self._register(port, "repository", grpc_port, pool=True)
                await host.register_all()
            await serving
        finally:
            front.ready = False
            if self.grpc is not None:
                await self.grpc.stop(0)
            await host.close()
            if self.store is not None:
                await asyncio.to_thread(self.store.close)
        return 0

    async def _start_http(self, app: Any) -> tuple[asyncio.Task[None], int] | None:
        """Serve ``app`` on the configured address; returns the serving task and the bound port
        once uvicorn has started, None when it ended before that."""
        s = self.settings
        sock = _bind(s.host, s.port)
        port = sock.getsockname()[1]
        config = uvicorn_config(app, log_level=s.log_level, drain_timeout_s=s.drain_timeout_s)
        server = self.server = _Server(config, self._start_drain)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if serving.done():
                serving.result()
                return None
            await asyncio.sleep(0.01)
        return serving, port

    def _say_listening(self, port: int, grpc_port: int | None) -> None:
        host = self.settings.host
        print(f"listening on http://{host}:{port}", flush=True)
        if grpc_port is not None:
            print(f"grpc listening on {host}:{grpc_port}", flush=True)

    async def _register_under(
        self, service: str, port: int, grpc_port: int | None, fields: dict[str, Any]
    ) -> Any:
        """Register this process's address under ``service`` with ``fields`` plus when, which
        process and the gRPC port; returns the registration."""
        payload = {**fields, "started": time.time(), "pid": os.getpid()}
        if grpc_port is not None:
            payload["grpc_port"] = grpc_port
        assert self.store is not None
        host = self.settings.host
        registration = await asyncio.to_thread(self.store.register, service, host, port, payload)
        log.info("registered %s/%s:%d", service, host, port)
        return registration

    async def _register_model(self, port: int, grpc_port: int | None, hosted: Any) -> Any:
        """Register one hosted model version under its own service (the instance's address)."""
        ms = hosted.settings
        fields = {"model": ms.name, "version": ms.version, "processor": hosted.processor.kind,
                  "weight": ms.weight}  # fmt: skip
        return await self._register_under(ms.service_name, port, grpc_port, fields)

    async def _register(
        self, port: int, kind: str, grpc_port: int | None = None, *, pool: bool = False
    ) -> None:
        """Register the instance (a repository instance, ``pool``: its models register on their
        own)."""
        s = self.settings
        fields: dict[str, Any] = (
            {"pool": True, "processor": kind}
            if pool
            else {"model": s.name, "version": s.version, "processor": kind, "weight": s.weight}
        )
        self.registration = await self._register_under(s.service_name, port, grpc_port, fields)

    async def _run_with_frontends(self, app: EasApp, processor: Processor, count: int) -> int:
        """Serve through ``count`` front end processes; this process is the executor."""
        s = self.settings
        loop = asyncio.get_running_loop()
        hub = self.hub = FrontendHub(
            app,
            app_options(s, processor),
            count=count,
            host=s.host,
            port=s.port,
            drain_timeout_s=s.drain_timeout_s,
            log_level=s.log_level,
            on_crash=self._crash,
        )
        app.batcher.start()
        loop.add_signal_handler(signal.SIGTERM, self._on_signal, signal.SIGTERM)
        loop.add_signal_handler(signal.SIGINT, self._on_signal, signal.SIGINT)
        try:
            port = await hub.start()
            grpc_port = await self._start_grpc(app)
            app.ready = True
            hub.set_ready(True)
            self._say_listening(port, grpc_port)
            if s.store:
                await self._register(port, processor.kind, grpc_port)
            await self._done.wait()
        finally:
            app.ready = False
            hub.kill()  # a no-op after a drain: they have exited
            if self.grpc is not None:
                await self.grpc.stop(0)
            await app.batcher.close()
            processor.close()
            if self.store is not None:
                await asyncio.to_thread(self.store.close)
        return self._status

    async def _start_grpc(self, app: Any) -> int | None:
        """Serve gRPC too (``--grpc-port``), before anything says the instance listens: a busy
        port fails the start instead of leaving an instance half up."""
        s = self.settings
        if s.grpc_port is None:
            return None
        from .grpc import start_grpc

        limit = int(s.max_body_mb * (1 << 20))
        self.grpc, port = await start_grpc(app, s.host, s.grpc_port, max_message_bytes=limit)
        return int(port)

    def _on_signal(self, sig: int) -> None:
        """Front end mode: the first SIGTERM drains; SIGINT or a second signal stops at once."""
        if sig == signal.SIGTERM and self._drain_task is None:
            self._start_drain()
            return
        assert self.hub is not None
        self._drain_task = self._drain_task or asyncio.get_running_loop().create_task(
            self._stop_now()
        )

    async def _stop_now(self) -> None:
        assert self.hub is not None
        await self.hub.stop(1.0)
        self._done.set()

    def _crash(self, reason: str) -> None:
        """A front end died: take the instance out of the store and go down whole."""
        log.error("%s: taking the instance down", reason)
        self._status = 1
        if self.app is not None:
            self.app.ready = False
        asyncio.get_running_loop().create_task(self._go_down())

    async def _go_down(self) -> None:
        if self.registration is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.registration.close)
            self.registration = None
        assert self.hub is not None
        self.hub.kill()
        self._done.set()

    def _start_drain(self) -> None:
        self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        """Deregister, keep serving until clients have moved away, then let uvicorn finish."""
        front: Any = self.front if self.host is not None else self.app
        assert front is not None
        front.ready = False
        if self.hub is not None:
            self.hub.set_ready(False)
        if self.registration is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.registration.close)
        if self.host is not None:
            self.host.announce = None  # a load finishing now must not register again
            await self.host.deregister_all()
        deadline = time.monotonic() + self.settings.drain_timeout_s
        quiet = 0.3  # no new request for this long: watchers have seen the deregistration
        await asyncio.sleep(min(quiet, self.settings.drain_timeout_s))
        while time.monotonic() < deadline:
            last = front.last_request  # HTTP here, or gRPC
            if self.hub is not None:
                last = max(last, self.hub.last_request)
            busy = self._busy() or (self.hub is not None and self.hub.busy)
            if not busy and time.monotonic() - last >= quiet:
                break
            await asyncio.sleep(0.05)
        if self.grpc is not None:  # refuse new RPCs, let those in flight finish in time left
            await self.grpc.stop(max(0.0, deadline - time.monotonic()))
        left = max(0.0, deadline - time.monotonic())
        if self.host is not None:
            await self.host.drain(left)
        elif self.app is not None:
            await self.app.batcher.drain(left)
        if self.hub is not None:  # the front ends finish writing what they have, then exit
            await self.hub.stop(max(1.0, deadline - time.monotonic()))
            self._done.set()
        else:
            assert self.server is not None
            self.server.should_exit = True

    def _busy(self) -> bool:
        if self.host is not None:
            return bool(self.host.busy)
        return self.app is not None and self.app.busy


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


async def _withdraw(registration: Any) -> None:
    """Close a model's registration (a store that fails here has lost it anyway)."""
    with contextlib.suppress(Exception):
        await asyncio.to_thread(registration.close)


def _open_store(url: str) -> Any:
    """The config store the instance registers in (imported here: a server without ``--store``
    never loads config_store's backends)."""
    from config_store import open_store

    return open_store(url)
