"""TrainingService: runs, training and fine-tuning jobs, evaluation and fine-tuning results."""

from i2x.training.service import TrainingServicer

__all__ = ["TrainingServicer"]
