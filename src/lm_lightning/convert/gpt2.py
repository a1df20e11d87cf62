"""GPT-2: our GPT and Hugging Face's GPT2LMHeadModel (and GGUF's ``gpt2``), in both directions.

Only GPT-2's shape converts: learned positions, LayerNorm with bias, tanh-GELU MLP of width
``d_ff``, tied output weights. Hugging Face stores its projections as ``Conv1D`` whose
weight is (in, out), the transpose of ``nn.Linear``'s (out, in); everything else maps by name.
transformers is imported inside the functions.
"""

from __future__ import annotations

from typing import Any

import torch

from lm_lightning.ckpt.state import TIED_HEAD
from lm_lightning.convert.base import Converter, load_pretrained
from lm_lightning.errors import UserError
from lm_lightning.model import GPT, ModelConfig

# Projections that are Conv1D in Hugging Face's GPT-2 (weight transposed relative to Linear).
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# GELU flavours equal to ours (tanh approximation).
_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
# GGUF's names for a block's tensors (weight and bias each).
_GGUF_BLOCK = (("attn_norm", "ln_1"), ("attn_qkv", "attn.c_attn"), ("attn_output", "attn.c_proj"),
               ("ffn_norm", "ln_2"), ("ffn_up", "mlp.c_fc"), ("ffn_down", "mlp.c_proj"))


def gpt2_shape_problems(cfg: ModelConfig) -> list[str]:
    """Why a config is not GPT-2's shape (empty when it is)."""
    want = {"pos_emb": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True, "tie_weights": True,
            "qk_norm": False, "logit_softcap": None, "value_embeds": 0, "unet_skips": False}
    gqa = [f"model.n_kv_head={cfg.n_kv_head} (GPT-2 has n_head={cfg.n_head})"] if cfg.n_kv_head != cfg.n_head else []
    return gqa + [f"model.{k}={getattr(cfg, k)!r} (GPT-2 has {v!r})" for k, v in want.items() if getattr(cfg, k) != v]


def hf_config(cfg: ModelConfig):
    from transformers import GPT2Config

    GPT2.check_shape(cfg, "; use model=gpt2")
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
        if k.endswith((".attn.bias", ".attn.masked_bias")) or k == TIED_HEAD:
            continue  # causal-mask buffers; the output layer is tied to wte
        if k.endswith(_CONV1D):
            value = value.t()
        if k == "wpe.weight" and block_size is not None:
            value = value[:block_size]
        out[k] = value.detach().clone().contiguous()
    return out


def to_hf_state(model: GPT) -> dict[str, torch.Tensor]:
    """A GPT2LMHeadModel state dict from our model (which must have GPT-2's shape)."""
    return GPT2.to_hf(model.state_dict(), model.config)


def gpt_from_hf(hf_model: Any) -> GPT:
    """Our GPT with the weights of a (random or pretrained) GPT2LMHeadModel."""
    return GPT2.gpt_from_hf(hf_model)


class GPT2Converter(Converter):
    name, hf_architecture, hf_model_type, gguf_arch = "gpt2", "GPT2LMHeadModel", "gpt2", "gpt2"
    label = "GPT-2"
    ids_from_tokenizer = False  # GPT-2's config has its own end-of-text id (50256) when the vocabulary does

    def shape_problems(self, cfg: ModelConfig) -> list[str]:
        return gpt2_shape_problems(cfg)

    def config_to_hf(self, cfg: ModelConfig, bos_token_id: int | None = None, eos_token_id: int | None = None):
        return hf_config(cfg)  # GPT-2's own end-of-text id when the vocabulary has it

    def config_from_hf(self, hf_cfg: Any, block_size: int | None = None) -> ModelConfig:
        return config_from_hf(hf_cfg, block_size)

    def from_hf(self, state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
        return from_hf_state(state, cfg.block_size)

    def to_hf(self, state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
        self.check_shape(cfg)
        out = {}
        for key, value in state.items():
            if key == TIED_HEAD:
                out[key] = value.detach().clone()
                continue
            if key.endswith(_CONV1D):
                value = value.t()
            out[f"transformer.{key}"] = value.detach().clone().contiguous()
        return out

    def hf_model(self, model: GPT, bos_token_id: int | None = None, eos_token_id: int | None = None):
        from transformers import GPT2LMHeadModel

        hf = GPT2LMHeadModel(hf_config(model.config))
        missing, unexpected = hf.load_state_dict(to_hf_state(model), strict=False)
        missing = [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias"))]
        if missing or unexpected:
            raise UserError(f"export: weights do not map onto GPT2LMHeadModel (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]})")
        return hf

    def pretrained_state(self, name: str, cfg: ModelConfig) -> dict[str, torch.Tensor]:
        """Hugging Face GPT-2 weights for ``model.init_from=NAME``, checked against the run's model."""
        hf = load_pretrained("GPT2LMHeadModel", name)
        src = config_from_hf(hf.config)
        mismatch = [f"{k} {getattr(cfg, k)} vs {getattr(src, k)}" for k in ("n_layer", "n_head", "n_embd", "d_ff")
                    if getattr(cfg, k) != getattr(src, k)]
        mismatch += gpt2_shape_problems(cfg)
        if cfg.vocab_size < src.vocab_size:
            mismatch.append(f"vocab_size {cfg.vocab_size} < {src.vocab_size} (use tokenizer=gpt2)")
        if cfg.block_size > src.block_size:
            mismatch.append(f"block_size {cfg.block_size} > {src.block_size}")
        if mismatch:
            raise UserError(f"model.init_from={name} does not fit this model: " + "; ".join(mismatch)
                            + " (use model=gpt2)")
        state = from_hf_state(hf.state_dict(), block_size=cfg.block_size)
        if cfg.vocab_size > src.vocab_size:  # a padded vocabulary: keep the extra rows at their init
            state["wte.weight"] = torch.cat([state["wte.weight"],
                                             torch.randn(cfg.vocab_size - src.vocab_size, cfg.n_embd) * 0.02])
        return state

    def gguf_tensors(self, sd: dict[str, Any], cfg: ModelConfig) -> list[tuple[str, Any]]:
        out = [("token_embd.weight", sd["wte.weight"]), ("position_embd.weight", sd["wpe.weight"])]
        for i in range(cfg.n_layer):
            for gguf, ours in _GGUF_BLOCK:
                out += [(f"blk.{i}.{gguf}.weight", sd[f"h.{i}.{ours}.weight"]),
                        (f"blk.{i}.{gguf}.bias", sd[f"h.{i}.{ours}.bias"])]
        return out + [("output_norm.weight", sd["ln_f.weight"]), ("output_norm.bias", sd["ln_f.bias"])]

    def gguf_hparams(self, writer: Any, cfg: ModelConfig) -> None:
        writer.add_layer_norm_eps(float(cfg.norm_eps))


GPT2 = GPT2Converter()

