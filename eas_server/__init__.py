"""eas-server: one model version behind the Open Inference Protocol, with dynamic batching."""

__all__: list[str] = []
