"""autoai.sdk: call models by name; the published route tables decide where each call goes.

```python
from autoai.sdk import ModelClient
with ModelClient("zk://127.0.0.1:2181/autoai") as client:
    out = client.predict("intent-cls", {"input_ids": ids, "attention_mask": mask})
    out = client.predict("intent", {"text": ["turn on the lights"]})  # text in, out["label"] str
    result = client.generate("whisper", samples, max_new_tokens=64)  # float32 audio, 16 kHz
    for chunk in client.generate_stream("whisper", samples):         # a chunk per token
        print(chunk.text, end="")
```
The client watches each model's route table in the store (pushed, cached in memory and in the
local snapshot), splits calls between versions by weight or by a sticky key, mirrors a fraction
to a shadow version (numeric outputs compared by cosine, labels and slots by agreement), and
hands each call to the client ``blade_aspect.on_call`` picks for the route (``EasClient`` or
``BladeClient``), which finds live instances and retries elsewhere. BYTES inputs take Python
text and BYTES outputs come back as ``str``. Generative models (``generate``, ``generate_stream``)
are routed the same way and answer ``eas_client.GenerateResult`` / ``eas_client.GenerateChunk``;
a stream stays on its version and, from its first chunk, on its instance, and is never mirrored.
"""

from ._async import AsyncModelClient
from ._client import ModelClient
from ._compare import Comparison, LabelAgreement, compare_outputs
from ._errors import (
    InvalidInput,
    InvalidRouteTable,
    ModelClientError,
    ModelNotFound,
    VersionNotFound,
)
from ._routes import BladeMeta, Route, RouteTable, Shadow, Signature, TensorSpec, parse_route_table
from ._selector import RouteSelector
from ._signature import check_inputs

__all__ = [
    "AsyncModelClient",
    "BladeMeta",
    "Comparison",
    "InvalidInput",
    "InvalidRouteTable",
    "LabelAgreement",
    "ModelClient",
    "ModelClientError",
    "ModelNotFound",
    "Route",
    "RouteSelector",
    "RouteTable",
    "Shadow",
    "Signature",
    "TensorSpec",
    "VersionNotFound",
    "check_inputs",
    "compare_outputs",
    "parse_route_table",
]
