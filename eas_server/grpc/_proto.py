"""The one import of grpcio and of the KServe v2 / Triton message definitions.

The messages are the generated modules that ship inside ``tritonclient[grpc]``: Triton's
``grpc_service.proto`` (package ``inference``, service ``GRPCInferenceService``), a superset of
KServe's ``grpc_predict_v2.proto`` with the same field numbers, plus ``model_config.proto``. Using
them keeps the server wire-identical to the client it is tested with, and spares the build a
protoc step.
"""

from __future__ import annotations

try:
    import grpc
    from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
except ImportError as exc:  # pragma: no cover - both are in the server extra
    raise ImportError(
        "eas-server's gRPC front end (--grpc-port) needs grpcio and tritonclient[grpc]: "
        "pip install 'grpcio>=1.60' 'tritonclient[grpc]==2.73.0' (or pip install 'autoai[server]')"
    ) from exc

__all__ = ["grpc", "model_config_pb2", "service_pb2", "service_pb2_grpc"]
