"""``model.init_from=DIR_OR_HUB_NAME``: the architecture step and the pretrained weights.

Two steps, both through the registry:

- ``derive_arch(name, arch, datamodule, user_keys)`` (before the model exists; reads config.json once
  and returns the architecture with its converter): an architecture
  whose converter reads config.json (Llama) takes every shape key from the folder; GPT-2 folders
  leave the preset's shape (``model=gpt2``) and are checked when the weights load;
- ``pretrained_state(name, model_cfg)``: the weights in our layout, checked against the model.
"""

from __future__ import annotations

from typing import Any

import torch

from lm_lightning.convert.base import Converter
from lm_lightning.convert.registry import for_hf_config, for_name, for_source, read_hf_config
from lm_lightning.errors import UserError

# Architecture keys that model.init_from=FOLDER sets from the folder's config.json.
SHAPE_KEYS = ("n_layer", "n_head", "n_kv_head", "n_embd", "d_ff", "vocab_size", "norm_eps", "rope_theta",
              "tie_weights", "pos_emb", "norm", "mlp", "bias", "qk_norm", "logit_softcap")


def user_model_keys(overrides: list[str]) -> set[str]:
    """Architecture keys set on the command line (``model.n_layer=4``, ``+model.x=..``)."""
    keys = set()
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key.startswith("model.") and key[6:] in SHAPE_KEYS + ("block_size",):
            keys.add(key[6:])
    return keys


def derive_arch(name: str, arch: dict[str, Any], datamodule: Any,
                user_keys: set[str]) -> tuple[dict[str, Any], Converter]:
    """The run's architecture when ``model.init_from`` names a folder (or hub model).

    Rule: the folder's config.json decides every architecture key (SHAPE_KEYS); the preset's and
    an experiment's values are replaced. A key given on the command line must agree with the
    folder, else UserError. block_size is the data's (or model.block_size when given) and must
    not exceed max_position_embeddings. GPT-2 folders keep the preset's shape (model=gpt2).
    """
    d = read_hf_config(name)
    converter = for_hf_config(d, name)
    src = converter.arch_from_hf(d or {}, f"model.init_from={name}")
    if src is None:
        return arch, converter
    clash = [f"model.{k}={arch.get(k)!r} but the folder has {src[k]!r}" for k in sorted(user_keys & set(src))
             if arch.get(k) != src[k]]
    if clash:
        raise UserError(f"model.init_from={name}: " + "; ".join(clash) + " (drop those overrides: the shape "
                        "comes from the folder)")
    out = {**arch, **src}
    max_pos = int(d.get("max_position_embeddings") or 0)
    block = int(arch["block_size"]) if "block_size" in user_keys and arch.get("block_size") else None
    block = block or int(datamodule.block_size)
    if max_pos and block > max_pos:
        raise UserError(f"model.init_from={name}: block_size {block} exceeds the model's "
                        f"max_position_embeddings {max_pos}; use data.block_size<={max_pos}")
    out["block_size"] = block
    data_vocab = int(datamodule.vocab_size)
    if data_vocab > src["vocab_size"]:
        raise UserError(f"model.init_from={name}: the tokenizer has {data_vocab} tokens, more than the model's "
                        f"vocab_size {src['vocab_size']}; use the model's tokenizer (tokenizer=hf tokenizer.path=DIR)")
    return out, converter


def pretrained_state(name: str, model_cfg: Any, kind: str | None = None) -> dict[str, torch.Tensor]:
    """The weights of ``model.init_from=NAME`` in our layout, checked against the run's model config.

    ``kind``: the converter's name when already known (``for_source(name).name``), so that
    config.json is not read again."""
    return (for_name(kind) if kind else for_source(name)).pretrained_state(name, model_cfg)
