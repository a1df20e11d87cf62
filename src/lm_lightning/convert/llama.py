"""Llama: our GPT and Hugging Face's LlamaForCausalLM (and GGUF's ``llama``), in both directions.

The Llama shape is ``model=llama``: RoPE, RMSNorm, SwiGLU of width ``d_ff`` (HF's
``intermediate_size``), no biases, grouped-query attention, no QK-norm, no logit soft-cap.
Everything maps by name except three layouts:

- HF keeps ``q_proj``, ``k_proj``, ``v_proj``; our ``attn.c_attn`` is one matrix whose output
  rows are ``[q; k; v]``.
- HF keeps ``gate_proj`` and ``up_proj``; our ``mlp.c_fc`` is one matrix with rows ``[gate; up]``.
- RoPE pairs. Our ``apply_rope`` rotates interleaved channel pairs (2i, 2i+1) of each head; HF's
  Llama rotates halves (i, i + hs/2), with the same frequency for pair i in both. Rotation acts
  on whichever two channels form a pair, so the two are one model up to a fixed permutation of
  each head's channels: our channel 2i is HF's channel i and our 2i+1 is HF's i + hs/2. Permuting
  the *rows* of the q and k projections (per head) moves the channels, and since queries and
  keys get the same permutation their dot products, hence the attention, are unchanged. Values
  and the output projection are not rotated and need nothing. This is the classic Meta <-> HF
  checkpoint permute; it keeps a single RoPE implementation in model.py.

GGUF's ``llama`` graph rotates interleaved pairs as ours does, so there the q and k rows are
written as they are (gguf_writer.py's docstring says why). transformers is imported inside the functions.
"""

from __future__ import annotations

from typing import Any

import torch

from lm_lightning.ckpt.state import TIED_HEAD
from lm_lightning.convert.base import Converter, load_pretrained
from lm_lightning.errors import UserError
from lm_lightning.model import GPT, ModelConfig

_FIXED = {"pos_emb": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False, "qk_norm": False,
          "logit_softcap": None, "value_embeds": 0, "unet_skips": False}


def llama_shape_problems(cfg: ModelConfig) -> list[str]:
    """Why a config is not Llama's shape (empty when it is)."""
    return [f"model.{k}={getattr(cfg, k)!r} (Llama has {v!r})" for k, v in _FIXED.items() if getattr(cfg, k) != v]


def hf_config(cfg: ModelConfig, bos_token_id: int | None = None, eos_token_id: int | None = None):
    """A LlamaConfig for our (Llama-shaped) config; bos/eos only when the tokenizer has such a token."""
    from transformers import LlamaConfig

    LLAMA.check_shape(cfg, "; use model=llama")
    return LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=cfg.d_ff,
                       num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                       num_key_value_heads=cfg.n_kv_head, head_dim=cfg.head_size, hidden_act="silu",
                       max_position_embeddings=cfg.block_size, rms_norm_eps=float(cfg.norm_eps),
                       rope_theta=float(cfg.rope_theta), attention_bias=False, mlp_bias=False,
                       attention_dropout=0.0, tie_word_embeddings=bool(cfg.tie_weights),
                       bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=None)


def _rope(d: dict[str, Any]) -> tuple[float, str | None]:
    """(theta, scaling type) from a config dict of transformers 4.x (rope_theta, rope_scaling) or 5.x
    (rope_parameters)."""
    params = d.get("rope_parameters") or {}
    scaling = d.get("rope_scaling") or {}
    theta = d.get("rope_theta") or params.get("rope_theta") or scaling.get("rope_theta") or 10000.0
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type")
    return float(theta), kind


def arch_from_hf(d: dict[str, Any], where: str = "config") -> dict[str, Any]:
    """Our architecture keys from a Llama config.json dict; what we cannot reproduce is a UserError."""
    theta, rope_kind = _rope(d)
    heads, hidden = int(d["num_attention_heads"]), int(d["hidden_size"])
    if rope_kind not in (None, "default"):
        raise UserError(f"{where}: rope scaling {rope_kind!r} is not supported (only plain RoPE, "
                        f"rope_type 'default'; e.g. Llama 3.1's 'llama3' scaling is not implemented)")
    if d.get("head_dim") not in (None, hidden // heads) or hidden % heads:
        raise UserError(f"{where}: head_dim {d.get('head_dim')} != hidden_size / num_attention_heads "
                        f"({hidden} / {heads}); not supported")
    if d.get("hidden_act", "silu") not in ("silu", "swish"):
        raise UserError(f"{where}: hidden_act {d.get('hidden_act')!r} is not supported (SwiGLU uses silu)")
    if d.get("attention_bias") or d.get("mlp_bias"):
        raise UserError(f"{where}: attention_bias/mlp_bias are not supported (our Llama has no biases)")
    return dict(n_layer=int(d["num_hidden_layers"]), n_head=heads, n_kv_head=int(d.get("num_key_value_heads") or heads),
                n_embd=hidden, d_ff=int(d["intermediate_size"]), vocab_size=int(d["vocab_size"]),
                norm_eps=float(d.get("rms_norm_eps", 1e-6)), rope_theta=theta,
                tie_weights=bool(d.get("tie_word_embeddings", False)), **_FIXED)


def config_from_hf(hf_cfg: Any, block_size: int | None = None) -> ModelConfig:
    """Our ModelConfig from a LlamaConfig (or its dict); block_size defaults to max_position_embeddings."""
    d = hf_cfg if isinstance(hf_cfg, dict) else hf_cfg.to_dict()
    return ModelConfig(**arch_from_hf(d), block_size=int(block_size or d["max_position_embeddings"]), dropout=0.0)


# -- weights -------------------------------------------------------------------------------------
def _hf_rows_to_ours(w: torch.Tensor, n: int, hs: int) -> torch.Tensor:
    """Per head, HF row a * hs/2 + i becomes our row 2i + a (halves -> interleaved pairs)."""
    return w.reshape(n, 2, hs // 2, -1).transpose(1, 2).reshape(n * hs, -1)


def _our_rows_to_hf(w: torch.Tensor, n: int, hs: int) -> torch.Tensor:
    """Per head, our row 2i + a becomes HF row a * hs/2 + i (the inverse permutation)."""
    return w.reshape(n, hs // 2, 2, -1).transpose(1, 2).reshape(n * hs, -1)


def from_hf_state(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our parameter names and layouts from a LlamaForCausalLM state dict."""
    hs = cfg.head_size
    try:
        out = {"wte.weight": state["model.embed_tokens.weight"], "ln_f.weight": state["model.norm.weight"]}
        if not cfg.tie_weights:
            out["lm_head.weight"] = state["lm_head.weight"]
        for i in range(cfg.n_layer):
            s, o = f"model.layers.{i}.", f"h.{i}."
            q = _hf_rows_to_ours(state[s + "self_attn.q_proj.weight"], cfg.n_head, hs)
            k = _hf_rows_to_ours(state[s + "self_attn.k_proj.weight"], cfg.n_kv_head, hs)
            out[o + "attn.c_attn.weight"] = torch.cat([q, k, state[s + "self_attn.v_proj.weight"]])
            out[o + "attn.c_proj.weight"] = state[s + "self_attn.o_proj.weight"]
            out[o + "mlp.c_fc.weight"] = torch.cat([state[s + "mlp.gate_proj.weight"], state[s + "mlp.up_proj.weight"]])
            out[o + "mlp.c_proj.weight"] = state[s + "mlp.down_proj.weight"]
            out[o + "ln_1.weight"] = state[s + "input_layernorm.weight"]
            out[o + "ln_2.weight"] = state[s + "post_attention_layernorm.weight"]
    except KeyError as exc:
        raise UserError(f"LlamaForCausalLM weights lack {exc.args[0]}") from exc
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def to_hf_state(model: GPT) -> dict[str, torch.Tensor]:
    """A LlamaForCausalLM state dict from our model (which must have Llama's shape)."""
    return LLAMA.to_hf(model.state_dict(), model.config)


def gpt_from_hf(hf_model: Any, block_size: int | None = None) -> GPT:
    """Our GPT with the weights of a (random or pretrained) LlamaForCausalLM."""
    return LLAMA.gpt_from_hf(hf_model, block_size)


def hf_llama_from_gpt(model: GPT, bos_token_id: int | None = None, eos_token_id: int | None = None):
    """A LlamaForCausalLM (fp32, eval) holding our model's weights."""
    return LLAMA.hf_model(model, bos_token_id, eos_token_id)


class LlamaConverter(Converter):
    name, hf_architecture, hf_model_type, gguf_arch = "llama", "LlamaForCausalLM", "llama", "llama"
    label = "Llama"

    def shape_problems(self, cfg: ModelConfig) -> list[str]:
        return llama_shape_problems(cfg)

    def config_to_hf(self, cfg: ModelConfig, bos_token_id: int | None = None, eos_token_id: int | None = None):
        return hf_config(cfg, bos_token_id, eos_token_id)

    def config_from_hf(self, hf_cfg: Any, block_size: int | None = None) -> ModelConfig:
        return config_from_hf(hf_cfg, block_size)

    def arch_from_hf(self, d: dict[str, Any], where: str = "config") -> dict[str, Any] | None:
        return arch_from_hf(d, where)

    def from_hf(self, state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
        return from_hf_state(state, cfg)

    def to_hf(self, state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
        self.check_shape(cfg)
        hs, C, kv = cfg.head_size, cfg.n_embd, cfg.kv_size
        out = {"model.embed_tokens.weight": state["wte.weight"], "model.norm.weight": state["ln_f.weight"],
               "lm_head.weight": state.get(TIED_HEAD, state["wte.weight"])}
        for i in range(cfg.n_layer):
            s, o = f"model.layers.{i}.", f"h.{i}."
            q, k, v = state[o + "attn.c_attn.weight"].split([C, kv, kv])
            out[s + "self_attn.q_proj.weight"] = _our_rows_to_hf(q, cfg.n_head, hs)
            out[s + "self_attn.k_proj.weight"] = _our_rows_to_hf(k, cfg.n_kv_head, hs)
            out[s + "self_attn.v_proj.weight"] = v
            out[s + "self_attn.o_proj.weight"] = state[o + "attn.c_proj.weight"]
            out[s + "mlp.gate_proj.weight"], out[s + "mlp.up_proj.weight"] = state[o + "mlp.c_fc.weight"].chunk(2)
            out[s + "mlp.down_proj.weight"] = state[o + "mlp.c_proj.weight"]
            out[s + "input_layernorm.weight"] = state[o + "ln_1.weight"]
            out[s + "post_attention_layernorm.weight"] = state[o + "ln_2.weight"]
        return {k: v.detach().clone().contiguous() for k, v in out.items()}

    def hf_model(self, model: GPT, bos_token_id: int | None = None, eos_token_id: int | None = None):
        from transformers import LlamaForCausalLM

        hf = LlamaForCausalLM(hf_config(model.config, bos_token_id, eos_token_id))
        missing, unexpected = hf.load_state_dict(to_hf_state(model), strict=False)
        if missing or unexpected:
            raise UserError(f"export: weights do not map onto LlamaForCausalLM (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]})")
        if model.config.tie_weights:
            hf.tie_weights()
        return hf.eval()

    def pretrained_state(self, name: str, cfg: ModelConfig) -> dict[str, torch.Tensor]:
        """LlamaForCausalLM weights for ``model.init_from=NAME`` in our layout, checked against the run's model."""
        hf = load_pretrained("LlamaForCausalLM", name, dtype=torch.float32)
        src = arch_from_hf(hf.config.to_dict(), f"model.init_from={name}")
        mismatch = [f"{k} {getattr(cfg, k)!r} vs {v!r}" for k, v in src.items() if getattr(cfg, k) != v]
        if mismatch:
            raise UserError(f"model.init_from={name} does not fit this model: " + "; ".join(mismatch))
        return from_hf_state(hf.state_dict(), cfg)

    def gguf_tensors(self, sd: dict[str, Any], cfg: ModelConfig) -> list[tuple[str, Any]]:
        C, kv, out = cfg.n_embd, cfg.kv_size, [("token_embd.weight", sd["wte.weight"])]
        for i in range(cfg.n_layer):
            o, b = f"h.{i}.", f"blk.{i}."
            w, fc = sd[o + "attn.c_attn.weight"], sd[o + "mlp.c_fc.weight"]
            out += [(b + "attn_norm.weight", sd[o + "ln_1.weight"]),
                    # Interleaved RoPE rows: already llama.cpp's layout (see gguf_writer.py).
                    (b + "attn_q.weight", w[:C]), (b + "attn_k.weight", w[C:C + kv]),
                    (b + "attn_v.weight", w[C + kv:]), (b + "attn_output.weight", sd[o + "attn.c_proj.weight"]),
                    (b + "ffn_norm.weight", sd[o + "ln_2.weight"]), (b + "ffn_gate.weight", fc[:cfg.d_ff]),
                    (b + "ffn_up.weight", fc[cfg.d_ff:]), (b + "ffn_down.weight", sd[o + "mlp.c_proj.weight"])]
        return out + [("output_norm.weight", sd["ln_f.weight"])]

    def gguf_hparams(self, writer: Any, cfg: ModelConfig) -> None:
        writer.add_head_count_kv(cfg.n_kv_head)
        writer.add_rope_freq_base(float(cfg.rope_theta))
        writer.add_rope_dimension_count(cfg.head_size)
        writer.add_layer_norm_rms_eps(float(cfg.norm_eps))


LLAMA = LlamaConverter()

