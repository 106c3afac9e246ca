"""Training on generated data: dataset export, GRPO rewards, trainer and evaluation."""
