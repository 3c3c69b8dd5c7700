"""Processors: the runtimes eas-server can serve a model with. ``create_processor`` picks one by
name from three places, first match wins:

1. built in: ``onnx``, ``pipeline`` (a bundle: tokenizer + model + labels) and ``seq2seq`` (a
   generation bundle: encoder + decoder step, served with iteration-level batching);
2. registered in-process with ``register_processor`` (``blade`` registers itself when importable);
3. installed packages' entry points in the group ``autoai.processors``
   (``importlib.metadata.entry_points(group="autoai.processors")``): the entry point's name is
   the processor name, its object a ``Processor`` subclass or a factory returning one. They are
   imported only when asked for by name, so one broken plugin fails only the model that names
   it, with a ``ModelLoadError`` naming its distribution and entry point.

A package provides ``--processor echo`` (or ``"processor": "echo"`` in the service JSON) with::

    # pyproject.toml of the plugin package
    [project.entry-points."autoai.processors"]
    echo = "my_package.processors:EchoProcessor"

See ``Processor`` for what to implement.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable
from importlib import metadata

from .._errors import ModelLoadError
from ._base import Processor, TensorSpec

__all__ = [
    "ENTRY_POINT_GROUP",
    "Processor",
    "ProcessorFactory",
    "TensorSpec",
    "create_processor",
    "processor_names",
    "register_processor",
]

_log = logging.getLogger("eas_server.processors")

ProcessorFactory = Callable[..., Processor]
ENTRY_POINT_GROUP = "autoai.processors"
"""The entry-point group installed packages add processors to."""

_FACTORIES: dict[str, ProcessorFactory] = {}
_LOADED: dict[str, ProcessorFactory] = {}
"""Factories that came from entry points (a later lookup finds them in ``_FACTORIES``)."""
# Modules that register more processors when they are importable.
_PLUGINS = ("blade.processor",)


def register_processor(name: str, factory: ProcessorFactory) -> None:
    """Make ``--processor NAME`` available."""
    _FACTORIES[name] = factory


def _entry_points() -> dict[str, metadata.EntryPoint]:
    """The installed ``autoai.processors`` entry points by name (not imported)."""
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def processor_names() -> list[str]:
    """Every processor name: built in, registered and installed as an entry point."""
    _load_builtin()
    return sorted(set(_FACTORIES) | set(_entry_points()))


def _load_builtin() -> None:
    if "onnx" not in _FACTORIES:
        from .onnx import OnnxProcessor

        register_processor("onnx", OnnxProcessor)
    if "pipeline" not in _FACTORIES:
        from .pipeline import PipelineProcessor

        register_processor(
            "pipeline", functools.partial(PipelineProcessor, create=create_processor)
        )
    if "seq2seq" not in _FACTORIES:
        from .seq2seq import Seq2SeqProcessor

        register_processor("seq2seq", Seq2SeqProcessor)
    for module in _PLUGINS:
        try:
            importlib.import_module(module)  # registers itself when installed
        except ModuleNotFoundError as exc:
            if exc.name is None or not module.startswith(exc.name):
                raise  # the plugin is there but broken: say so


def _origin(ep: metadata.EntryPoint) -> str:
    dist = ep.dist.name if ep.dist is not None else "an unknown distribution"
    return f"entry point {ep.name!r} = {ep.value!r} of {dist} (group {ENTRY_POINT_GROUP})"


def _from_entry_point(ep: metadata.EntryPoint) -> ProcessorFactory:
    """Import an entry point's processor; ModelLoadError says which plugin failed and how."""
    try:
        obj = ep.load()
    except Exception as exc:  # a plugin may raise anything while importing
        raise ModelLoadError(
            f"processor {ep.name!r} cannot be loaded: {_origin(ep)} failed to import: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if isinstance(obj, type) and not issubclass(obj, Processor):
        raise ModelLoadError(
            f"processor {ep.name!r}: {_origin(ep)} is the class {obj.__qualname__}, which is "
            "not a subclass of eas_server.Processor"
        )
    if not callable(obj):
        raise ModelLoadError(
            f"processor {ep.name!r}: {_origin(ep)} is a {type(obj).__name__}; expected a "
            "Processor subclass or a factory returning a Processor"
        )
    return obj  # type: ignore[no-any-return]


def _factory(name: str) -> tuple[ProcessorFactory, str]:
    """The factory of ``name`` and where it comes from (for messages)."""
    _load_builtin()
    ep = _entry_points().get(name)
    if name in _FACTORIES:
        factory = _FACTORIES[name]
        if ep is not None and factory is _LOADED.get(name):
            return factory, _origin(ep)
        if ep is not None:
            _log.warning("processor %r: the built-in one is used, not %s", name, _origin(ep))
        return factory, f"processor {name!r}"
    if ep is None:
        raise ModelLoadError(
            f"unknown processor {name!r}; available: {', '.join(processor_names())}"
        )
    factory = _from_entry_point(ep)
    register_processor(name, factory)  # imported once per process
    _LOADED[name] = factory
    return factory, _origin(ep)


def create_processor(name: str, model_path: str, **options: object) -> Processor:
    """Build (not load) a processor.

    Args:
        name: a built-in, registered or entry-point processor name.
        model_path: what it serves (a file or directory; the processor decides).
        options: ``workers``, ``intra_op_threads``, ``spinning`` (every processor), ``padding``
            (``onnx`` only).

    Raises:
        ModelLoadError: no processor of that name; a plugin that fails to import, is not a
            Processor, or whose factory fails or returns something else.
    """
    factory, origin = _factory(name)
    try:
        processor = factory(model_path, **options)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"{origin} could not be created for {model_path}: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(processor, Processor):
        raise ModelLoadError(
            f"{origin} returned a {type(processor).__name__}, not an eas_server.Processor"
        )
    if not processor.kind:
        processor.kind = name  # metrics and registrations label by it
    return processor
