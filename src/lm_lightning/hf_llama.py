"""Weights between our GPT and Hugging Face's LlamaForCausalLM, in both directions.

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

transformers is imported inside the functions; reading a folder's config.json needs only json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lm_lightning.errors import UserError
from lm_lightning.model import GPT, ModelConfig

# Architecture keys that model.init_from=LLAMA_FOLDER sets from the folder's config.json.
SHAPE_KEYS = ("n_layer", "n_head", "n_kv_head", "n_embd", "d_ff", "vocab_size", "norm_eps", "rope_theta",
              "tie_weights", "pos_emb", "norm", "mlp", "bias", "qk_norm", "logit_softcap")
_FIXED = {"pos_emb": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False, "qk_norm": False,
          "logit_softcap": None, "value_embeds": 0, "unet_skips": False}


def llama_shape_problems(cfg: ModelConfig) -> list[str]:
    """Why a config is not Llama's shape (empty when it is)."""
    return [f"model.{k}={getattr(cfg, k)!r} (Llama has {v!r})" for k, v in _FIXED.items() if getattr(cfg, k) != v]


def hf_config(cfg: ModelConfig, bos_token_id: int | None = None, eos_token_id: int | None = None):
    """A LlamaConfig for our (Llama-shaped) config; bos/eos only when the tokenizer has such a token."""
    from transformers import LlamaConfig

    problems = llama_shape_problems(cfg)
    if problems:
        raise UserError("not Llama's architecture: " + ", ".join(problems) + "; use model=llama")
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
    cfg = model.config
    problems = llama_shape_problems(cfg)
    if problems:
        raise UserError("not Llama's architecture: " + ", ".join(problems))
    sd, hs, C, kv = model.state_dict(), cfg.head_size, cfg.n_embd, cfg.kv_size
    out = {"model.embed_tokens.weight": sd["wte.weight"], "model.norm.weight": sd["ln_f.weight"],
           "lm_head.weight": sd["lm_head.weight"]}
    for i in range(cfg.n_layer):
        s, o = f"model.layers.{i}.", f"h.{i}."
        q, k, v = sd[o + "attn.c_attn.weight"].split([C, kv, kv])
        out[s + "self_attn.q_proj.weight"] = _our_rows_to_hf(q, cfg.n_head, hs)
        out[s + "self_attn.k_proj.weight"] = _our_rows_to_hf(k, cfg.n_kv_head, hs)
        out[s + "self_attn.v_proj.weight"] = v
        out[s + "self_attn.o_proj.weight"] = sd[o + "attn.c_proj.weight"]
        out[s + "mlp.gate_proj.weight"], out[s + "mlp.up_proj.weight"] = sd[o + "mlp.c_fc.weight"].chunk(2)
        out[s + "mlp.down_proj.weight"] = sd[o + "mlp.c_proj.weight"]
        out[s + "input_layernorm.weight"] = sd[o + "ln_1.weight"]
        out[s + "post_attention_layernorm.weight"] = sd[o + "ln_2.weight"]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def gpt_from_hf(hf_model: Any, block_size: int | None = None) -> GPT:
    """Our GPT with the weights of a (random or pretrained) LlamaForCausalLM."""
    model = GPT(config_from_hf(hf_model.config, block_size))
    load_into(model, from_hf_state(hf_model.state_dict(), model.config))
    return model.eval()


def load_into(model: GPT, state: dict[str, torch.Tensor]) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (model.config.tie_weights and k == "lm_head.weight")]
    if missing or unexpected:
        raise UserError(f"Llama weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")


def hf_llama_from_gpt(model: GPT, bos_token_id: int | None = None, eos_token_id: int | None = None):
    """A LlamaForCausalLM (fp32, eval) holding our model's weights."""
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM(hf_config(model.config, bos_token_id, eos_token_id))
    missing, unexpected = hf.load_state_dict(to_hf_state(model), strict=False)
    if missing or unexpected:
        raise UserError(f"export: weights do not map onto LlamaForCausalLM (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")
    if model.config.tie_weights:
        hf.tie_weights()
    return hf.eval()


# -- model.init_from=DIR_OR_HUB_NAME ---------------------------------------------------------------
_LOAD_HINT = "(HF_HOME sets the cache); train from scratch without model.init_from, offline"


def read_hf_config(name: str) -> dict[str, Any] | None:
    """config.json of a local folder or a hub name (cache first); None when the hub has no answer.

    A folder without config.json or with unreadable JSON is a UserError. A hub name that cannot
    be fetched returns None: the weights loader reports it with the offline message.
    """
    p = Path(name)
    if p.is_dir():
        f = p / "config.json"
        if not f.is_file():
            raise UserError(f"model.init_from={name}: no config.json in that folder (expected a transformers "
                            f"model folder, e.g. from save_pretrained or lm_lightning.export)")
        try:
            return json.loads(f.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"model.init_from={name}: cannot read config.json ({exc})") from exc
    from lm_lightning.data.hub import ensure_mode

    ensure_mode()
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(name, "config.json")).read_text())
    except Exception:
        return None


def init_kind(name: str) -> str:
    """'llama' or 'gpt2' (also when the hub has no answer: the GPT-2 loader reports that); else UserError."""
    d = read_hf_config(name)
    kind = (d or {}).get("model_type", "gpt2")
    if kind not in ("llama", "gpt2"):
        arch = ", ".join((d or {}).get("architectures") or []) or "unknown class"
        raise UserError(f"model.init_from={name}: a {kind!r} model ({arch}); only Llama (LlamaForCausalLM) "
                        f"and GPT-2 (GPT2LMHeadModel) folders load")
    return kind


def user_model_keys(overrides: list[str]) -> set[str]:
    """Architecture keys set on the command line (``model.n_layer=4``, ``+model.x=..``)."""
    keys = set()
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key.startswith("model.") and key[6:] in SHAPE_KEYS + ("block_size",):
            keys.add(key[6:])
    return keys


def apply_init_from(name: str, arch: dict[str, Any], datamodule: Any, user_keys: set[str]) -> dict[str, Any]:
    """The run's architecture when ``model.init_from`` names a Llama folder (or hub model).

    Rule: the folder's config.json decides every architecture key (SHAPE_KEYS); the preset's and
    an experiment's values are replaced. A key given on the command line must agree with the
    folder, else UserError. block_size is the data's (or model.block_size when given) and must
    not exceed max_position_embeddings. GPT-2 folders are left to hf_gpt2 (model=gpt2).
    """
    if init_kind(name) != "llama":
        return arch
    d = read_hf_config(name)
    src = arch_from_hf(d, f"model.init_from={name}")
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
    return out


def pretrained_state(name: str, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """LlamaForCausalLM weights for ``model.init_from=NAME`` in our layout, checked against the run's model."""
    from lm_lightning.data.hub import ensure_mode

    if not Path(name).is_dir():
        ensure_mode()
    try:
        from transformers import LlamaForCausalLM

        hf = LlamaForCausalLM.from_pretrained(name, dtype=torch.float32)
    except Exception as exc:
        raise UserError(f"model.init_from={name}: weights could not be loaded from the Hugging Face hub or cache "
                        f"{_LOAD_HINT}") from exc
    src = arch_from_hf(hf.config.to_dict(), f"model.init_from={name}")
    mismatch = [f"{k} {getattr(cfg, k)!r} vs {v!r}" for k, v in src.items() if getattr(cfg, k) != v]
    if mismatch:
        raise UserError(f"model.init_from={name} does not fit this model: " + "; ".join(mismatch))
    return from_hf_state(hf.state_dict(), cfg)
