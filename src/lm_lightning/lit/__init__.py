"""The LightningModule side: :class:`~lm_lightning.lit.module.LMModule` (heads, multi-task loss, metrics,
optimizers), the named objectives and their weights, the validation metrics, and how the model is
parallelised (FSDP2, activation checkpointing) from ``configure_model``."""
