"""lm_lightning: a PyTorch Lightning + Hydra trainer for transformer language models."""

__version__ = "0.1.0"
