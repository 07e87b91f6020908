"""trainer: data layer (trainer.data) and, later, Ray Train workers for incremental training."""
