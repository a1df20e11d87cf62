"""Temporary: the names train.py imported before lm_lightning.convert; removed once it switches."""

from lm_lightning.convert.init_from import derive_arch as apply_init_from
from lm_lightning.convert.init_from import user_model_keys
from lm_lightning.convert.llama import LLAMA
from lm_lightning.convert.registry import for_source

pretrained_state = LLAMA.pretrained_state


def init_kind(name: str) -> str:
    return for_source(name).name


__all__ = ["apply_init_from", "init_kind", "pretrained_state", "user_model_keys"]
