"""PCM trainer client: the selector SDK (`connect`, `connect_async`), GRPO with selective
backward, the small VLA policy, environment adapters and the training loop."""

from trainer_client.clients import SelectorClient, connect
from trainer_client.clients.aio import AsyncSelectorClient, connect_async

__all__ = ["AsyncSelectorClient", "SelectorClient", "connect", "connect_async"]
