"""The model repository: ONNX files stored by content (sha256), versions recorded in the store.

```python
repo = ModelRepository(Path("/var/lib/autoai/repo"), store)
version = repo.register("intent-cls", Path("model.onnx"))  # ModelVersion(version="1", sha256, ...)
repo.models(); repo.model("intent-cls"); repo.version("intent-cls", "1")
repo.delete("intent-cls", "1")
```
"""

from ._repository import (
    MAX_MODEL_BYTES,
    Model,
    ModelRepository,
    ModelVersion,
    storage_error,
    validate_name,
)

__all__ = [
    "MAX_MODEL_BYTES",
    "Model",
    "ModelRepository",
    "ModelVersion",
    "storage_error",
    "validate_name",
]
