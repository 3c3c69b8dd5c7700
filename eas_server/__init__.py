"""eas-server: one model version behind the Open Inference Protocol, with dynamic batching.

Run it with ``eas-server --model model.onnx --name NAME`` (see ``eas-server --help``).
"""

from ._cpu import usable_cores
from ._errors import (
    EasServerError,
    InvalidInput,
    ModelLoadError,
    ModelNotFound,
    PayloadTooLarge,
    ProcessorError,
    QueueFull,
    QueueTimeout,
    ShuttingDown,
    Unauthorized,
    Unavailable,
)
from ._network import is_loopback
from .batching import DynamicBatcher, Padding
from .processors import Processor, TensorSpec, create_processor, register_processor

__all__ = [
    "DynamicBatcher",
    "EasServerError",
    "InvalidInput",
    "ModelLoadError",
    "ModelNotFound",
    "Padding",
    "PayloadTooLarge",
    "Processor",
    "ProcessorError",
    "QueueFull",
    "QueueTimeout",
    "ShuttingDown",
    "TensorSpec",
    "Unauthorized",
    "Unavailable",
    "create_processor",
    "is_loopback",
    "register_processor",
    "usable_cores",
]
