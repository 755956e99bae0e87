"""PCM trainer client: the selector SDK (`connect`), GRPO with selective backward, the small VLA
policy, environment adapters and the training loop."""

from trainer_client.clients import SelectorClient, connect

__all__ = ["SelectorClient", "connect"]
