"""AutoAI: the model-serving control plane (service, CLI, SDK)."""

__all__: list[str] = []
