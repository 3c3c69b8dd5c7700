"""The model repository: ONNX files and bundles stored by content (sha256), versions recorded in
the store.

```python
repo = ModelRepository(Path("/var/lib/autoai/repo"), store)
version = repo.register("intent-cls", Path("model.onnx"))  # ModelVersion(version="1", sha256, ...)
bundle = repo.register("intent", Path("intent.tar.gz"))  # or its directory; .bundle: task, labels
parts = {"model": ("m.onnx", onnx_bytes), "tokenizer": ..., "labels": ..., "pipeline": ...}
repo.register_parts("intent", parts)                     # a bundle uploaded as several files
repo.models(); repo.model("intent-cls"); repo.version("intent-cls", "1")
repo.delete("intent-cls", "1")
```
"""

from ._bundles import ARCHIVE_SUFFIXES, MAX_BUNDLE_BYTES, MAX_BUNDLE_FILES, PARTS, BundleLimits
from ._repository import (
    MAX_MODEL_BYTES,
    Model,
    ModelRepository,
    ModelVersion,
    validate_name,
)
from ._storage import storage_error

__all__ = [
    "ARCHIVE_SUFFIXES",
    "MAX_BUNDLE_BYTES",
    "MAX_BUNDLE_FILES",
    "MAX_MODEL_BYTES",
    "PARTS",
    "BundleLimits",
    "Model",
    "ModelRepository",
    "ModelVersion",
    "storage_error",
    "validate_name",
]
