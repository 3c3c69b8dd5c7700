"""Starting the gRPC front end on the running event loop (the HTTP server's, uvloop included).

``grpc.aio`` drives its completion queue from whatever asyncio loop it is started on, so the
servicer's coroutines await ``DynamicBatcher.infer`` on the loop the batcher is bound to.
"""

from __future__ import annotations

import errno
from typing import Any

from ._proto import grpc, service_pb2_grpc
from ._service import Catalog, InferenceServicer

__all__ = ["start_grpc"]


async def start_grpc(
    app: Catalog, host: str, port: int, *, max_message_bytes: int = 64 << 20
) -> tuple[Any, int]:
    """Serve ``inference.GRPCInferenceService`` for ``app`` on ``host:port``.

    Call it from the running event loop that serves HTTP. Stop the server with
    ``await server.stop(grace_s)`` (idempotent).

    Args:
        app: the HTTP app (one model's, or a repository's) whose models, batchers, metrics and
            token are shared.
        host: the address to bind (only this one).
        port: the port; 0 picks a free one.
        max_message_bytes: the largest request message (larger ones get RESOURCE_EXHAUSTED).

    Returns:
        ``(server, bound_port)``: the started ``grpc.aio.Server`` and its port.

    Raises:
        OSError: the address cannot be bound.
    """
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),  # a busy port must fail, not be shared with another server
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
        ]
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(app), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(errno.EADDRINUSE, f"cannot bind gRPC to {address}") from exc
    if not bound:  # older grpcio answers 0 instead of raising
        raise OSError(errno.EADDRINUSE, f"cannot bind gRPC to {address}")
    await server.start()
    return server, int(bound)
