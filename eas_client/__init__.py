"""Client side of the Open Inference Protocol: the pure codec shared with the server, and clients."""

__all__: list[str] = []
