"""Fine-tuning: the one training loop every recovery step uses."""
