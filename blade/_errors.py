"""The blade exception hierarchy.

```
BladeError
  ├── InvalidModel          not ONNX, truncated, unsupported opset or IR version (also ValueError)
  ├── InvalidTestData       test data with missing, unknown or mistyped inputs (also ValueError)
  ├── RuntimeNotAvailable   the device's runtime is missing (no CUDA EP, no TensorRT)
  └── VerificationFailed    a loaded artifact disagrees with its reference outputs
```
A pass that fails while optimizing is not an error: the report records it and the pass is not used.
"""

from __future__ import annotations

__all__ = [
    "BladeError",
    "InvalidModel",
    "InvalidTestData",
    "RuntimeNotAvailable",
    "VerificationFailed",
]


class BladeError(Exception):
    """Base of every blade error."""


class InvalidModel(BladeError, ValueError):
    """The model file cannot be optimized: not ONNX, truncated, or an opset onnxruntime lacks."""


class InvalidTestData(BladeError, ValueError):
    """Test data that does not fit the model's inputs."""


class RuntimeNotAvailable(BladeError):
    """The runtime the device needs is not installed; the message says what to install."""


class VerificationFailed(BladeError):
    """An artifact's outputs disagree with the reference it was verified against."""
