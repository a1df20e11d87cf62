"""The one interface every Hugging Face architecture implements (convert/registry.py holds them).

A converter maps our :class:`~lm_lightning.model.GPT` to one transformers class and back:

- ``shape_problems(cfg)``: why a ModelConfig is not this architecture's shape (empty when it is);
- ``config_to_hf(cfg, bos, eos)`` / ``config_from_hf(hf_cfg, block_size)``: the config both ways;
- ``to_hf(state, cfg)`` / ``from_hf(state, cfg)``: state dicts both ways (names and layouts);
- ``hf_model(model, bos, eos)``: a transformers model holding our weights (export);
- ``gpt_from_hf(hf_model)``: our GPT holding a transformers model's weights;
- ``arch_from_hf(d)``, ``pretrained_state(name, cfg)``: what ``model.init_from`` needs;
- ``gguf_tensors(state, cfg)`` / ``gguf_hparams(writer, cfg)``: the GGUF layout and metadata.

transformers is imported inside the methods, so the registry is cheap to import.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from lm_lightning.ckpt.state import missing_but_tied
from lm_lightning.errors import UserError
from lm_lightning.model import GPT, ModelConfig


class Converter(ABC):
    """Base class: subclasses set the names and implement the mappings."""

    name = ""  # our preset (model=NAME) and registry key
    label = ""  # how messages name the architecture ("GPT-2")
    hf_architecture = ""  # the transformers class, as config.json's "architectures" names it
    hf_model_type = ""  # config.json's "model_type"
    gguf_arch = ""  # general.architecture in a .gguf
    ids_from_tokenizer = True  # export: bos/eos from the tokenizer, written to generation_config.json

    @abstractmethod
    def shape_problems(self, cfg: ModelConfig) -> list[str]:
        """Why ``cfg`` is not this architecture's shape (empty when it is)."""

    def check_shape(self, cfg: ModelConfig, hint: str = "") -> None:
        problems = self.shape_problems(cfg)
        if problems:
            raise UserError(f"not {self.label}'s architecture: " + ", ".join(problems) + hint)

    @abstractmethod
    def config_to_hf(self, cfg: ModelConfig, bos_token_id: int | None = None, eos_token_id: int | None = None):
        """The transformers config of a model of this shape (bos/eos from the tokenizer, when it has them)."""

    @abstractmethod
    def config_from_hf(self, hf_cfg: Any, block_size: int | None = None) -> ModelConfig:
        """Our ModelConfig from a transformers config (``block_size`` defaults to its context)."""

    @abstractmethod
    def to_hf(self, state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
        """A transformers state dict (names and layouts) from our state dict."""

    @abstractmethod
    def from_hf(self, state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
        """Our state dict from a transformers state dict."""

    @abstractmethod
    def hf_model(self, model: GPT, bos_token_id: int | None = None, eos_token_id: int | None = None):
        """A transformers model (fp32, eval) holding our model's weights."""

    def gpt_from_hf(self, hf_model: Any, block_size: int | None = None) -> GPT:
        model = GPT(self.config_from_hf(hf_model.config, block_size))
        state = self.from_hf(hf_model.state_dict(), model.config)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = missing_but_tied(missing, model.config.tie_weights)
        if missing or unexpected:
            raise UserError(f"{self.label} weights do not fit the model (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]})")
        return model.eval()

    def arch_from_hf(self, d: dict[str, Any], where: str = "config") -> dict[str, Any] | None:
        """The architecture keys ``model.init_from`` takes from config.json (None: the preset keeps its own)."""
        return None

    @abstractmethod
    def pretrained_state(self, name: str, cfg: ModelConfig) -> dict[str, torch.Tensor]:
        """The weights of ``model.init_from=NAME`` in our layout, checked against ``cfg``."""

    @abstractmethod
    def gguf_tensors(self, sd: dict[str, Any], cfg: ModelConfig) -> list[tuple[str, Any]]:
        """(GGUF name, array) for every tensor but the untied output layer, from numpy arrays."""

    @abstractmethod
    def gguf_hparams(self, writer: Any, cfg: ModelConfig) -> None:
        """The architecture's GGUF hyperparameters beyond the common ones."""


def load_pretrained(cls_name: str, name: str, **kwargs: Any):
    """A transformers ``cls_name`` from a folder or the hub (cache first); the offline one-line error."""
    from pathlib import Path

    from lm_lightning.data.hub import ensure_mode

    if not Path(name).is_dir():
        ensure_mode()
    try:
        import transformers

        return getattr(transformers, cls_name).from_pretrained(name, **kwargs)
    except Exception as exc:
        raise UserError(f"model.init_from={name}: weights could not be loaded from the Hugging Face hub or cache "
                        f"(HF_HOME sets the cache); train from scratch without model.init_from, offline") from exc
