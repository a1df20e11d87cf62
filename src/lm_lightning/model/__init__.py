"""The model in plain PyTorch: :class:`ModelConfig` (config.py), the parts (layers.py), :class:`GPT` and
sampling (gpt.py), value embeddings and U-net skips (skips.py). No Lightning, Hydra or task code here."""

from lm_lightning.model.config import BLOCK_PARAM, ModelConfig
from lm_lightning.model.gpt import GPT, sample_token

__all__ = ["BLOCK_PARAM", "GPT", "ModelConfig", "sample_token"]
