"""Client side of the Open Inference Protocol: the pure codec shared with the server, and clients.

```python
with eas_client.EasClient(store="zk://zk1:2181/autoai", service="intent-cls-3") as client:
    outputs = client.infer({"input_ids": ids, "attention_mask": mask})

body, header_length = eas_client.encode_request({"x": array}, outputs=["y"])
response = eas_client.decode_response(answer_body, answer_header_length)
response.outputs["y"]

with eas_client.EasClient(urls=["http://127.0.0.1:8000"], model="whisper") as client:
    result = client.generate(samples, max_new_tokens=64)        # float32 at 16 kHz
    result.tokens, result.text, result.finish_reason
    for chunk in client.generate_stream(samples):               # a chunk per token
        chunk.tokens, chunk.text
```
"""

from ._async import AsyncEasClient
from ._balancer import RetryBudget
from ._client import EasClient
from ._codec import (
    InferRequest,
    InferResponse,
    RequestedOutput,
    RequestInput,
    decode_error,
    decode_request,
    decode_response,
    encode_error,
    encode_request,
    encode_response,
    resolve_raw_input,
)
from ._datatypes import DATATYPES, datatype_of, dtype_of, element_size
from ._errors import (
    ConnectError,
    EasClientError,
    InvalidRequest,
    ModelNotFound,
    NoInstanceAvailable,
    ProtocolError,
    ServerError,
    ServiceUnavailable,
    TimeoutException,
    TransportError,
    Unauthorized,
)
from ._generate import GenerateChunk, GenerateResult, SseDecoder, encode_audio
from ._metrics import ClientMetrics

__all__ = [
    "DATATYPES",
    "AsyncEasClient",
    "ClientMetrics",
    "ConnectError",
    "EasClient",
    "EasClientError",
    "GenerateChunk",
    "GenerateResult",
    "InferRequest",
    "InferResponse",
    "InvalidRequest",
    "ModelNotFound",
    "NoInstanceAvailable",
    "ProtocolError",
    "RequestInput",
    "RequestedOutput",
    "RetryBudget",
    "ServerError",
    "ServiceUnavailable",
    "SseDecoder",
    "TimeoutException",
    "TransportError",
    "Unauthorized",
    "datatype_of",
    "decode_error",
    "decode_request",
    "decode_response",
    "dtype_of",
    "element_size",
    "encode_audio",
    "encode_error",
    "encode_request",
    "encode_response",
    "resolve_raw_input",
]
