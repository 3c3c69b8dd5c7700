"""The model versions one instance hosts: loading, swapping and unloading them while the others
serve.

Each hosted version is a whole single-model app (``EasApp``: its processor, dynamic batcher,
queue, metrics labels and documents); the host only keeps the table, the states Triton's
repository index reports, and the order of loads (one at a time: they compete for the same cores,
and the memory a load adds is measured around it).
"""

from __future__ import annotations

import asyncio
import enum
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from .._app import EasApp
from .._build import build_app
from .._cpu import plan_runtime, usable_cores
from .._errors import EasServerError, ModelNotFound, Unavailable
from .._metrics import MetricFamilies
from .._resources import process_gpu_bytes, rss_bytes
from .._settings import PER_MODEL_FIELDS, ServerSettings
from ..processors import Processor, create_processor
from ._layout import LayoutError, ModelSource, list_models, resolve, version_key

__all__ = ["Hosted", "LoadFailed", "ModelHost", "ModelState"]

log = logging.getLogger("eas_server.repository")


class ModelState(enum.StrEnum):
    """Triton's model states, as the repository index reports them."""

    READY = "READY"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


class LoadFailed(EasServerError):
    """A model could not be loaded (the message says why); the others keep serving."""


@dataclass
class Hosted:
    """One model version of the table."""

    name: str
    version: str
    state: ModelState
    app: EasApp | None = None
    processor: Processor | None = None
    settings: ServerSettings | None = None
    registration: Any = None
    memory_bytes: int = 0
    gpu_memory_bytes: int | None = None
    loaded_s: float = 0.0
    """How long the load took (read, session, warm-up)."""


Announce = Callable[[Hosted], Awaitable[Any]]
"""Register a model version that became ready; returns its registration (closed on unload)."""


class ModelHost:
    """The table of hosted model versions.

    Args:
        base: the instance's settings: its address, store, token and limits; the per-model
            settings given there (flags, ``EAS_*``) are defaults a model's service JSON overrides.
        registry: the instance's metrics registry (every model's series, one exposition).
    """

    def __init__(self, base: ServerSettings, registry: CollectorRegistry):
        self.base = base
        self.root = Path(base.model_repository) if base.model_repository else None
        self.registry = registry
        self.families = MetricFamilies(registry)
        self._models: dict[str, dict[str, Hosted]] = {}
        self._failed: dict[tuple[str, str], str] = {}
        """(name, version) -> why its last load failed (version "" when none was found)."""
        self._lock = asyncio.Lock()
        self.running = False
        """Batchers start once the server's loop serves (``start``)."""
        self.announce: Announce | None = None
        self.withdraw: Callable[[Any], Awaitable[None]] | None = None
        self._defaults = {
            k: getattr(base, k)
            for k in PER_MODEL_FIELDS - {"model", "name", "version", "service", "processor"}
            if k in base.model_fields_set
        }

    # --------------------------------------------------------------------------- lookups

    def find(self, name: str, version: str | None) -> EasApp:
        """The app serving ``name`` (``version`` None: its highest ready version).

        Raises:
            ModelNotFound: not hosted here.
            Unavailable: loading or being unloaded (503 with Retry-After: try again, or another
                instance).
        """
        versions = self._models.get(name)
        if not versions or (version is not None and version not in versions):
            asked = name if version is None else f"{name} version {version}"
            raise ModelNotFound(
                f"model {asked} is not loaded here (POST /v2/repository/index lists the models)"
            )
        if version is None:
            ready = [v for v, h in versions.items() if h.state is ModelState.READY]
            version = max(ready or versions, key=version_key)
        hosted = versions[version]
        if hosted.state is ModelState.READY and hosted.app is not None:
            return hosted.app
        what = "is loading" if hosted.state is ModelState.LOADING else "is being unloaded"
        raise Unavailable(f"model {name} version {version} {what}")

    def hosted(self) -> list[Hosted]:
        return [h for versions in self._models.values() for h in versions.values()]

    def apps(self) -> list[EasApp]:
        """The ready apps, by name and version."""
        found = [h for h in self.hosted() if h.state is ModelState.READY and h.app is not None]
        found.sort(key=lambda h: (h.name, version_key(h.version)))
        return [h.app for h in found if h.app is not None]

    @property
    def busy(self) -> bool:
        return any(h.app.busy for h in self.hosted() if h.app is not None)

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton's repository index: every hosted version, and the repository's other models
        (``UNAVAILABLE``: ``unloaded``, or why their last load failed)."""
        entries = [
            {"name": h.name, "version": h.version, "state": str(h.state), "reason": ""}
            for h in self.hosted()
            if not ready_only or h.state is ModelState.READY
        ]
        if not ready_only:
            hosted = {(h.name, h.version) for h in self.hosted()}
            for (name, version), reason in self._failed.items():
                # a failure before any version was found is news only while none is hosted
                if (name, version) not in hosted and (version or name not in self._models):
                    entries.append(
                        {"name": name, "version": version, "state": "UNAVAILABLE", "reason": reason}
                    )
            named = {e["name"] for e in entries}
            on_disk = list_models(self.root) if self.root is not None else {}
            for name, versions in on_disk.items():
                if name not in named:
                    version = versions[-1] if versions else ""
                    entries.append(
                        {"name": name, "version": version, "state": "UNAVAILABLE",
                         "reason": "unloaded"}
                    )  # fmt: skip
        return sorted(entries, key=lambda e: (e["name"], version_key(e["version"])))

    # --------------------------------------------------------------------------- changes

    async def load_repository(self) -> None:
        """Load every model of the repository directory (at start; failures are logged and
        reported by the index, the others serve)."""
        if self.root is None:
            return
        for name in list_models(self.root):
            try:
                await self.load(name)
            except LoadFailed as exc:
                log.error("%s", exc)

    async def load(self, name: str, config: str | None = None) -> Hosted:
        """Load (or reload) model ``name``: its latest version in the repository, or what
        ``config`` (a service JSON) says. A version already loaded keeps serving until its
        replacement is ready, and keeps serving if the replacement fails.

        Raises:
            LoadFailed: the model, its config or its runtime failed (the message says which).
        """
        async with self._lock:
            try:
                source = await asyncio.to_thread(resolve, self.root, name, config)
            except (LayoutError, OSError) as exc:
                self._record_failure(name, "", str(exc))
                raise LoadFailed(f"failed to load {name!r}: {exc}") from exc
            versions = self._models.setdefault(name, {})
            old = versions.get(source.version)
            placeholder = None
            if old is None:
                placeholder = versions[source.version] = Hosted(
                    name, source.version, ModelState.LOADING
                )
            try:
                hosted = await self._build(source)
            except BaseException as exc:
                if placeholder is not None:
                    del versions[source.version]
                    if not versions:
                        del self._models[name]
                if not isinstance(exc, Exception):
                    raise
                self._record_failure(name, source.version, str(exc))
                raise LoadFailed(f"failed to load {name!r}: {exc}") from exc
            self._failed.pop((name, source.version), None)
            self._failed.pop((name, ""), None)
            if self.running:
                self._start(hosted)
            if old is not None and self._same_service(old, hosted):
                hosted.registration, old.registration = old.registration, None  # no gap
            versions[source.version] = hosted
            if old is not None:
                await self._retire(old, keep_series=self._same_series(old, hosted))
            if self.running and hosted.registration is None and self.announce is not None:
                hosted.registration = await self.announce(hosted)
            log.info(
                "loaded %s version %s (%s, %.1f s, %.0f MiB)",
                name, source.version, hosted.settings.processor if hosted.settings else "?",
                hosted.loaded_s, hosted.memory_bytes / (1 << 20),
            )  # fmt: skip
            return hosted

    async def unload(self, name: str, version: str | None = None) -> list[Hosted]:
        """Unload ``name`` (every version, or ``version``): deregister, let its queue drain
        (at most the drain timeout), then free it.

        Raises:
            ModelNotFound: nothing of that name (and version) is loaded.
        """
        async with self._lock:
            versions = self._models.get(name, {})
            going = [h for v, h in versions.items() if version is None or v == version]
            if not going:
                asked = name if version is None else f"{name} version {version}"
                raise ModelNotFound(f"model {asked} is not loaded here")
            for hosted in going:
                await self._retire(hosted)
                versions.pop(hosted.version, None)
            if not versions:
                self._models.pop(name, None)
            return going

    def start(self) -> None:
        """The server's loop serves now: start every batcher."""
        self.running = True
        for hosted in self.hosted():
            if hosted.app is not None:
                self._start(hosted)

    async def register_all(self) -> None:
        """Register every ready version (once the instance listens)."""
        for hosted in self.hosted():
            if hosted.state is ModelState.READY and hosted.registration is None and self.announce:
                hosted.registration = await self.announce(hosted)

    async def deregister_all(self) -> None:
        for hosted in self.hosted():
            await self._withdraw(hosted)

    async def drain(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for hosted in self.hosted():
            if hosted.app is not None:
                await hosted.app.batcher.drain(max(0.0, deadline - time.monotonic()))

    async def close(self) -> None:
        """Stop every batcher and free every session (the instance stops)."""
        for hosted in self.hosted():
            if hosted.app is not None:
                hosted.app.ready = False
                await hosted.app.batcher.close()
            if hosted.processor is not None:
                hosted.processor.close()
        self._models.clear()

    # ---------------------------------------------------------------------------- internals

    def _settings(self, source: ModelSource) -> ServerSettings:
        values = {
            k: v
            for k, v in self.base.model_dump().items()
            if k not in PER_MODEL_FIELDS and k != "model_repository"
        }
        values.update(self._defaults)
        values.update({k: v for k, v in source.fields.items() if k in PER_MODEL_FIELDS})
        values.update(
            model=str(source.path), name=source.name, version=source.version,
            processor=source.processor, frontends=1,
        )  # fmt: skip
        try:
            return ServerSettings.load(values)
        except ValueError as exc:  # pydantic's ValidationError is one
            raise LayoutError(f"invalid settings for {source.name}: {exc}") from None

    async def _build(self, source: ModelSource) -> Hosted:
        settings = self._settings(source)
        started = time.perf_counter()
        cores = usable_cores()
        # Many sessions share the cores: spinning pools would take them from each other.
        spinning = settings.ort_spinning if settings.ort_spinning is not None else False
        # Batches run on each model's worker thread, not inline on the event loop: inline, every
        # model's batch waits for every other model's (one at a time), and under traffic spread
        # over many models the batches are small, so one at a time leaves cores idle.
        handoff = settings.handoff == "inline"
        cpu = plan_runtime(
            cores, workers=settings.workers, threads=settings.intra_op_threads,
            spinning=spinning, inline=handoff,
        )  # fmt: skip
        gc.collect()
        rss_before, gpu_before = rss_bytes(), process_gpu_bytes()
        processor = create_processor(
            settings.processor, settings.model, workers=settings.workers,
            intra_op_threads=cpu.threads, spinning=cpu.spinning, **settings.processor_options(),
        )  # fmt: skip
        try:
            await asyncio.to_thread(processor.load)
            await asyncio.to_thread(processor.warmup)
        except BaseException:
            processor.close()
            raise
        if processor.device != "cpu":
            cpu = plan_runtime(
                cores, workers=settings.workers, device=processor.device,
                threads=cpu.threads, spinning=cpu.spinning, inline=handoff,
            )  # fmt: skip
        app = build_app(settings, processor, self.registry, inline=cpu.inline,
                        families=self.families)  # fmt: skip
        gc.collect()
        memory = max(0, rss_bytes() - rss_before)
        gpu_after = process_gpu_bytes()
        gpu = None if gpu_before is None or gpu_after is None else max(0, gpu_after - gpu_before)
        app.metrics.memory = [{"type": "CPU", "id": 0, "byte_size": memory}]
        if gpu is not None:
            app.metrics.memory.append({"type": "GPU", "id": 0, "byte_size": gpu})
        return Hosted(
            source.name, source.version, ModelState.READY, app=app, processor=processor,
            settings=settings, memory_bytes=memory, gpu_memory_bytes=gpu,
            loaded_s=time.perf_counter() - started,
        )  # fmt: skip

    def _record_failure(self, name: str, version: str, reason: str) -> None:
        """Keep why a load failed for the index: per version, and one entry for failures before
        a version was known, which replaces (and is replaced by) those of versions not hosted."""
        hosted = self._models.get(name, {})
        if version:
            self._failed.pop((name, ""), None)
        else:
            for key in [k for k in self._failed if k[0] == name and k[1] not in hosted]:
                del self._failed[key]
        self._failed[(name, version)] = reason

    @staticmethod
    def _start(hosted: Hosted) -> None:
        if hosted.app is not None:
            hosted.app.batcher.start()
            hosted.app.ready = True

    @staticmethod
    def _same_service(old: Hosted, new: Hosted) -> bool:
        """The replacement registers exactly as the old one did (its registration carries
        over, so the instance never leaves the service)."""
        a, b = old.settings, new.settings
        if a is None or b is None:
            return False
        return (a.service_name, a.processor, a.weight) == (b.service_name, b.processor, b.weight)

    @staticmethod
    def _same_series(old: Hosted, new: Hosted) -> bool:
        """Same metric labels: the replacement's series are the old one's (not removed)."""
        if old.settings is None or new.settings is None:
            return False
        return old.settings.processor == new.settings.processor

    async def _withdraw(self, hosted: Hosted) -> None:
        registration, hosted.registration = hosted.registration, None
        if registration is not None and self.withdraw is not None:
            await self.withdraw(registration)

    async def _retire(self, hosted: Hosted, *, keep_series: bool = False) -> None:
        hosted.state = ModelState.UNLOADING
        await self._withdraw(hosted)
        if hosted.app is not None:
            app = hosted.app
            # Calls already routed here (reading their body, queued, running) finish first;
            # new ones cannot reach it any more (not READY).
            deadline = time.monotonic() + self.base.drain_timeout_s
            while (app.in_progress or app.busy) and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            app.ready = False
            await app.batcher.close()
            if not keep_series:
                app.metrics.remove()
        if hosted.processor is not None:
            await asyncio.to_thread(hosted.processor.close)
        hosted.app = hosted.processor = None
