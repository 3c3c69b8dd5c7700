"""KServe v2 gRPC (``inference.GRPCInferenceService``) for eas-server, next to HTTP.

Imported only when ``--grpc-port`` is given: it needs ``grpcio`` and ``tritonclient[grpc]`` (whose
generated modules define the messages). ``start_grpc`` serves an ``EasApp``'s model on the running
event loop through the same batcher, token check, readiness and metrics as HTTP.
"""

from ._convert import decode_infer_request, encode_infer_response
from ._server import start_grpc
from ._service import CODES, InferenceServicer

__all__ = [
    "CODES",
    "InferenceServicer",
    "decode_infer_request",
    "encode_infer_response",
    "start_grpc",
]
