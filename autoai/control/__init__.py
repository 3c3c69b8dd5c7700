"""A client of the control plane's REST API (``autoai up``), blocking and asyncio: the one client
the CLI, the scripts, the benchmarks and the tests use.

```python
from autoai.control import ControlClient, ControlError

with ControlClient("http://127.0.0.1:8080", token=token) as control:
    version = control.register_model("intent", file=Path("model.onnx")).version
    bundle = control.register_model("intent", file=Path("intent-bundle/"))  # packed, uploaded
    job_id = control.deploy("intent", version, {"processor": "onnx"})
    control.wait_job(job_id, timeout=300, on_progress=lambda job: print(job.step))
    control.publish("intent", {"routes": [{"version": version, "weight": 100}]})
```
Answers are the ``autoai.schema`` documents the API declares (``ModelVersion``, ``Deployment``,
``JobInfo``, ``PublishResult``, ``Pool``, ...); bodies may be its request models
(``DeploySpec``, ``PublishRequest``) or their JSON form. Every failure is a ``ControlError``:
one subclass per error status, ``Unreachable`` when nothing answers, ``JobFailed`` /
``JobTimeout`` from ``wait_job``; each carries the server's ``{"error", "detail"}``.
"""

from ._async import AsyncControlClient
from ._base import DEFAULT_URL, JOB_DONE, Body, OnProgress
from ._bundle import BUNDLE_PARTS, pack_bundle
from ._client import ControlClient
from ._errors import (
    Conflict,
    ControlError,
    Forbidden,
    InsufficientStorage,
    InvalidRequest,
    JobFailed,
    JobTimeout,
    NotFound,
    PayloadTooLarge,
    ServerError,
    Unauthorized,
    Unavailable,
    UnexpectedAnswer,
    Unreachable,
)

__all__ = [
    "BUNDLE_PARTS",
    "DEFAULT_URL",
    "JOB_DONE",
    "AsyncControlClient",
    "Body",
    "Conflict",
    "ControlClient",
    "ControlError",
    "Forbidden",
    "InsufficientStorage",
    "InvalidRequest",
    "JobFailed",
    "JobTimeout",
    "NotFound",
    "OnProgress",
    "PayloadTooLarge",
    "ServerError",
    "Unauthorized",
    "Unavailable",
    "UnexpectedAnswer",
    "Unreachable",
    "pack_bundle",
]
