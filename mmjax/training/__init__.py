"""The run's plumbing: the trainer, optimizer, checkpoints and metric writers."""
