"""blade_aspect: the one place where blade and plain differ.

```python
plan = blade_aspect.on_deploy("model.onnx", {"blade": True})  # optimize or not; processor
entry = blade_aspect.on_publish(PublishRoute(version="3", weight=90), deployment,
                                fallback_version="2")             # autoai.schema.RouteEntry
cls = blade_aspect.on_call(route)                                    # EasClient or BladeClient
plan = blade_aspect.on_deploy(bundle_dir, {})                        # processor "pipeline"
```
"""

from ._aspect import (
    BLADE,
    PIPELINE,
    PLAIN,
    DeployPlan,
    call_options,
    is_blade,
    is_bundle,
    on_call,
    on_deploy,
    on_publish,
    wants_blade,
)
from ._errors import AspectError, InvalidDeploySpec, InvalidRouteRequest, NotOptimized

__all__ = [
    "BLADE",
    "PIPELINE",
    "PLAIN",
    "AspectError",
    "DeployPlan",
    "InvalidDeploySpec",
    "InvalidRouteRequest",
    "NotOptimized",
    "call_options",
    "is_blade",
    "is_bundle",
    "on_call",
    "on_deploy",
    "on_publish",
    "wants_blade",
]
