"""The training loop: SFT (`sft`), GRPO/PCM RL (`rl`), evaluation, data-parallel helpers,
checkpoints, metrics and plots, and the demo. The `pcm-train` CLI is `trainer_client.cli`."""
