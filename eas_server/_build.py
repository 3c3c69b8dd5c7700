"""Wiring one loaded model version into an app: its batcher, metrics and documents (used by the
single-model server, the model repository and in-process tests). A generative model
(``Seq2SeqProcessor``) also gives the app its generation engine, which reports to the metrics."""

from __future__ import annotations

from importlib import metadata
from typing import Any

from prometheus_client import CollectorRegistry

from ._app import EasApp
from ._metrics import MetricFamilies, ServerMetrics
from ._model import ModelInfo
from ._settings import ServerSettings
from .batching import DynamicBatcher
from .generation._spec import MAX_BEAMS
from .processors import Processor
from .processors._padding import padding_json
from .processors.seq2seq import Seq2SeqProcessor

__all__ = ["app_options", "build_app", "server_version"]


def server_version() -> str:
    try:
        return metadata.version("autoai")
    except metadata.PackageNotFoundError:
        return "0"


def build_app(
    settings: ServerSettings,
    processor: Processor,
    registry: CollectorRegistry | None = None,
    *,
    inline: bool = False,
    families: MetricFamilies | None = None,
) -> EasApp:
    """Wire a loaded processor into an ASGI app (used by ``serve`` and by in-process tests);
    ``inline`` runs batches on the event loop's thread (``_cpu.plan_runtime``); ``families``
    are the registry's metric families when the instance hosts several model versions."""
    registry = registry if registry is not None else CollectorRegistry()
    metrics = ServerMetrics(
        registry,
        model=settings.name,
        version=settings.version,
        processor=processor.kind,
        server_version=server_version(),
        insecure=settings.open_on_purpose,
        families=families,
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
        inline=inline and processor.workers == 1,
        ahead=processor.device != "cpu",  # keep the device fed (see DynamicBatcher)
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
    options = app_options(settings, processor)
    generator = None
    if isinstance(processor, Seq2SeqProcessor):
        if processor.engine is None:
            raise ValueError("build_app needs a loaded processor (seq2seq: load() first)")
        generator = processor.engine
        metrics.track_generation()
        generator.observer = metrics
    return EasApp(model=model, batcher=batcher, metrics=metrics, generator=generator, **options)


def app_options(settings: ServerSettings, processor: Processor) -> dict[str, Any]:
    """``OipApp``'s options other than the model (plain JSON: front end processes get them too)."""
    max_batch = settings.max_batch_size
    levels = settings.priority_levels
    return {
        "token": settings.token.get_secret_value() if settings.token else None,
        "max_body_bytes": int(settings.max_body_mb * (1 << 20)),
        "max_batch_size": max_batch,
        "dynamic_batching": {
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
        "instance_group": [
            {
                "name": settings.name,
                "kind": "KIND_GPU" if processor.device == "gpu" else "KIND_CPU",
                "count": processor.workers,
                "gpus": [0] if processor.device == "gpu" else [],
            }
        ],
        "server_version": server_version(),
        "parameters": {"padding": padding_json(processor.padding), **_generation(processor)},
    }


def _generation(processor: Processor) -> dict[str, str]:
    """A generative model's /config parameters: its ``generation.json`` and the request limits."""
    if not isinstance(processor, Seq2SeqProcessor) or processor.spec is None:
        return {}
    spec = processor.spec
    return {
        "generation": spec.model_dump_json(),
        "max_new_tokens": str(spec.max_new_tokens),
        "max_output_tokens": str(spec.max_output),
        "max_beams": str(min(MAX_BEAMS, processor.capacity)),
        "decoder_rows": str(processor.capacity),
        "max_queue_size": str(processor.max_queue),
    }
