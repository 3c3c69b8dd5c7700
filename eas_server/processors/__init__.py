"""Processors: the runtimes eas-server can serve a model with. ``create_processor`` picks one by
name; ``onnx`` is built in, others (``blade``) register themselves with ``register_processor``."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from .._errors import ModelLoadError
from ._base import Processor, TensorSpec

__all__ = [
    "Processor",
    "ProcessorFactory",
    "TensorSpec",
    "create_processor",
    "processor_names",
    "register_processor",
]

ProcessorFactory = Callable[..., Processor]
_FACTORIES: dict[str, ProcessorFactory] = {}
# Modules that register more processors when they are importable.
_PLUGINS = ("blade.processor",)


def register_processor(name: str, factory: ProcessorFactory) -> None:
    """Make ``--processor NAME`` available."""
    _FACTORIES[name] = factory


def processor_names() -> list[str]:
    _load_builtin()
    return sorted(_FACTORIES)


def _load_builtin() -> None:
    if "onnx" not in _FACTORIES:
        from .onnx import OnnxProcessor

        register_processor("onnx", OnnxProcessor)
    for module in _PLUGINS:
        try:
            importlib.import_module(module)  # registers itself when installed
        except ModuleNotFoundError as exc:
            if exc.name is None or not module.startswith(exc.name):
                raise  # the plugin is there but broken: say so


def create_processor(name: str, model_path: str, **options: object) -> Processor:
    """Build (not load) a processor.

    Raises:
        ModelLoadError: no processor of that name.
    """
    _load_builtin()
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ModelLoadError(
            f"unknown processor {name!r}; available: {', '.join(sorted(_FACTORIES))}"
        ) from None
    return factory(model_path, **options)
