"""blade_client: calling a blade service the way its route says.

```python
from blade_client import BladeClient
client = BladeClient(store=store, service="intent-cls-3-blade",
                     blade=route["blade"], fallback=EasClient(store=store, service="intent-cls-2"))
outputs = client.infer({"input_ids": ids, "attention_mask": mask})
```
A ``BladeClient`` is an ``eas_client.EasClient`` (same transport, discovery, retries and metrics)
that splits batches larger than the blade profile, sends requests outside the profile to the
fallback version's route, and falls back to it when the blade service cannot answer.
"""

from ._client import AsyncBladeClient, BladeClient
from ._errors import BladeClientError, InvalidProfile, OutsideProfile
from ._profile import BladeProfile, Plan, merge_outputs

__all__ = [
    "AsyncBladeClient",
    "BladeClient",
    "BladeClientError",
    "BladeProfile",
    "InvalidProfile",
    "OutsideProfile",
    "Plan",
    "merge_outputs",
]
