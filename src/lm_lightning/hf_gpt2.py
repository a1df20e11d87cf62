"""Weights between our GPT and Hugging Face's GPT2LMHeadModel, in both directions.

Only GPT-2's shape converts: learned positions, LayerNorm with bias, tanh-GELU MLP of width
``d_ff``, tied output weights. Hugging Face stores its projections as ``Conv1D`` whose
weight is (in, out), the transpose of ``nn.Linear``'s (out, in); everything else maps by name.
transformers is imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lm_lightning.errors import UserError
from lm_lightning.model import GPT, ModelConfig

# Projections that are Conv1D in Hugging Face's GPT-2 (weight transposed relative to Linear).
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# GELU flavours equal to ours (tanh approximation).
_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def gpt2_shape_problems(cfg: ModelConfig) -> list[str]:
    """Why a config is not GPT-2's shape (empty when it is)."""
    want = {"pos_emb": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True, "tie_weights": True,
            "qk_norm": False, "logit_softcap": None, "value_embeds": 0, "unet_skips": False}
    gqa = [f"model.n_kv_head={cfg.n_kv_head} (GPT-2 has n_head={cfg.n_head})"] if cfg.n_kv_head != cfg.n_head else []
    return gqa + [f"model.{k}={getattr(cfg, k)!r} (GPT-2 has {v!r})" for k, v in want.items() if getattr(cfg, k) != v]


def hf_config(cfg: ModelConfig):
    from transformers import GPT2Config

    problems = gpt2_shape_problems(cfg)
    if problems:
        raise UserError("not GPT-2's architecture: " + ", ".join(problems) + "; use model=gpt2")
    return GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
                      n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=cfg.d_ff, activation_function="gelu_new",
                      resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
                      layer_norm_epsilon=1e-5, tie_word_embeddings=True,
                      bos_token_id=50256 if cfg.vocab_size > 50256 else None,
                      eos_token_id=50256 if cfg.vocab_size > 50256 else None)


def config_from_hf(hf_cfg: Any, block_size: int | None = None) -> ModelConfig:
    act = getattr(hf_cfg, "activation_function", "gelu_new")
    if act not in _TANH_GELU:
        raise UserError(f"GPT-2 activation {act!r} is not supported (ours is tanh-GELU)")
    return ModelConfig(n_layer=hf_cfg.n_layer, n_head=hf_cfg.n_head, n_embd=hf_cfg.n_embd,
                       d_ff=hf_cfg.n_inner or 4 * hf_cfg.n_embd, vocab_size=hf_cfg.vocab_size,
                       block_size=block_size or hf_cfg.n_positions, dropout=0.0, pos_emb="learned",
                       norm="layernorm", mlp="gelu", bias=True, tie_weights=True)


def from_hf_state(state: dict[str, torch.Tensor], block_size: int | None = None) -> dict[str, torch.Tensor]:
    """Our parameter names and layouts from a GPT2LMHeadModel state dict."""
    out = {}
    for key, value in state.items():
        k = key.removeprefix("transformer.")
        if k.endswith((".attn.bias", ".attn.masked_bias")) or k == "lm_head.weight":
            continue  # causal-mask buffers; the output layer is tied to wte
        if k.endswith(_CONV1D):
            value = value.t()
        if k == "wpe.weight" and block_size is not None:
            value = value[:block_size]
        out[k] = value.detach().clone().contiguous()
    return out


def to_hf_state(model: GPT) -> dict[str, torch.Tensor]:
    """A GPT2LMHeadModel state dict from our model (which must have GPT-2's shape)."""
    problems = gpt2_shape_problems(model.config)
    if problems:
        raise UserError("not GPT-2's architecture: " + ", ".join(problems))
    out = {}
    for key, value in model.state_dict().items():
        if key == "lm_head.weight":
            out[key] = value.detach().clone()
            continue
        if key.endswith(_CONV1D):
            value = value.t()
        out[f"transformer.{key}"] = value.detach().clone().contiguous()
    return out


def gpt_from_hf(hf_model: Any) -> GPT:
    """Our GPT with the weights of a (random or pretrained) GPT2LMHeadModel."""
    model = GPT(config_from_hf(hf_model.config))
    model.load_state_dict(from_hf_state(hf_model.state_dict()), strict=False)
    return model.eval()


def pretrained_state(name: str, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Hugging Face GPT-2 weights for ``model.init_from=NAME``, checked against the run's model."""
    from lm_lightning.data.hub import ensure_mode

    if not Path(name).is_dir():
        ensure_mode()
    try:
        from transformers import GPT2LMHeadModel

        hf = GPT2LMHeadModel.from_pretrained(name)
    except Exception as exc:
        raise UserError(
            f"model.init_from={name}: weights could not be loaded from the Hugging Face hub or cache "
            f"(HF_HOME sets the cache); train from scratch without model.init_from, offline"
        ) from exc
    src = config_from_hf(hf.config)
    mismatch = [f"{k} {getattr(cfg, k)} vs {getattr(src, k)}" for k in ("n_layer", "n_head", "n_embd", "d_ff")
                if getattr(cfg, k) != getattr(src, k)]
    mismatch += gpt2_shape_problems(cfg)
    if cfg.vocab_size < src.vocab_size:
        mismatch.append(f"vocab_size {cfg.vocab_size} < {src.vocab_size} (use tokenizer=gpt2)")
    if cfg.block_size > src.block_size:
        mismatch.append(f"block_size {cfg.block_size} > {src.block_size}")
    if mismatch:
        raise UserError(f"model.init_from={name} does not fit this model: " + "; ".join(mismatch) + " (use model=gpt2)")
    state = from_hf_state(hf.state_dict(), block_size=cfg.block_size)
    if cfg.vocab_size > src.vocab_size:  # a padded vocabulary: keep the extra rows at their init
        state["wte.weight"] = torch.cat([state["wte.weight"],
                                         torch.randn(cfg.vocab_size - src.vocab_size, cfg.n_embd) * 0.02])
    return state
