"""One readable decoder-only transformer in plain PyTorch.

Nothing here knows about Lightning, Hydra or tasks: the LightningModule wraps
:class:`GPT` with task heads and losses. Shapes are commented as (B, T, C) =
(batch, time, channels); nh = heads, hs = head size.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lm_lightning.model_skips import UNetSkips, ValueEmbeddings

# A parameter of transformer block i is named "...h.<i>...." (GPT.h is the ModuleList of blocks):
# the one place that knows it, for layer-wise lr decay, freezing and Muon's parameter choice.
BLOCK_PARAM = re.compile(r"(?:^|\.)h\.(\d+)\.")


@dataclass
class ModelConfig:
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    n_kv_head: int | None = None  # grouped-query attention: key/value heads; None = n_head
    d_ff: int | None = None  # None: 4 * n_embd (gelu, relu2) or the 2/3-scaled width (swiglu)
    vocab_size: int = 256
    block_size: int = 256
    dropout: float = 0.0
    pos_emb: str = "rope"  # rope | learned
    rope_theta: float = 10000.0
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: float | None = None  # None: 1e-5 for layernorm, 1e-6 for rmsnorm (Llama: 1e-5)
    mlp: str = "gelu"  # gelu | swiglu | relu2
    bias: bool = False
    tie_weights: bool = True
    qk_norm: bool = False  # RMSNorm of each head's queries and keys before RoPE
    logit_softcap: float | None = None  # cap * tanh(logits / cap) on the output logits; None = off
    value_embeds: int = 0  # token tables added to the attention values of the first/last layers (model_skips.py)
    unet_skips: bool = False  # first-half layer outputs join their mirror second-half layers' inputs
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "vocab_size", "block_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})"
            )
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if not isinstance(self.n_kv_head, int) or isinstance(self.n_kv_head, bool) or self.n_kv_head <= 0:
            raise ValueError(f"model.n_kv_head must be a positive integer, got {self.n_kv_head!r}")
        if self.n_head % self.n_kv_head:
            raise ValueError(
                f"model.n_head ({self.n_head}) must be divisible by model.n_kv_head ({self.n_kv_head})"
            )
        if self.pos_emb not in ("rope", "learned"):
            raise ValueError(f"model.pos_emb must be 'rope' or 'learned', got {self.pos_emb!r}")
        if self.pos_emb == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError("model.pos_emb=rope needs an even head size (n_embd / n_head)")
        if self.norm not in ("layernorm", "rmsnorm"):
            raise ValueError(f"model.norm must be 'layernorm' or 'rmsnorm', got {self.norm!r}")
        if self.mlp not in ("gelu", "swiglu", "relu2"):
            raise ValueError(f"model.mlp must be 'gelu', 'swiglu' or 'relu2', got {self.mlp!r}")
        if self.norm_eps is None:
            self.norm_eps = 1e-5 if self.norm == "layernorm" else 1e-6
        if not float(self.norm_eps) > 0:
            raise ValueError(f"model.norm_eps must be positive, got {self.norm_eps}")
        if self.logit_softcap is not None and not float(self.logit_softcap) > 0:
            raise ValueError(f"model.logit_softcap must be positive (or null for off), got {self.logit_softcap}")
        if not 0 <= self.value_embeds <= (self.n_layer + 1) // 2:
            raise ValueError(f"model.value_embeds must be in [0, {(self.n_layer + 1) // 2}] (a table feeds a first "
                             f"and a last layer), got {self.value_embeds}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.d_ff is None:
            # SwiGLU has three matrices instead of two: keep the parameter count comparable.
            self.d_ff = _round_up(8 * self.n_embd // 3, 64) if self.mlp == "swiglu" else 4 * self.n_embd
        if self.d_ff <= 0:
            raise ValueError(f"model.d_ff must be positive, got {self.d_ff}")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_size(self) -> int:
        """Width of the keys (and of the values): n_kv_head * head_size."""
        return self.n_kv_head * self.head_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 for stability under bf16/fp16 autocast.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.n_embd, cfg.norm_eps)
    return nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)


def rope_cache(head_size: int, length: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (T, hs/2) for rotary position embeddings."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, nh, T, hs); rotate pairs (even, odd) of each head's channels. Hugging Face's Llama
    # rotates halves (i, i + hs/2) instead; the two layouts differ only by a fixed permutation of
    # each head's query/key rows, so hf_llama.py permutes those rows when converting and this
    # one model reproduces LlamaForCausalLM exactly (q.k is unchanged by a shared permutation).
    x1, x2 = x[..., 0::2], x[..., 1::2]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2)


class CausalSelfAttention(nn.Module):
    """Multi-head attention with grouped-query K/V (n_kv_head <= n_head) and optional QK-norm.

    c_attn's output rows are [q (n_head * hs); k (n_kv_head * hs); v (n_kv_head * hs)].
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_size = cfg.n_head, cfg.n_kv_head, cfg.head_size
        self.c_attn = nn.Linear(cfg.n_embd, cfg.n_embd + 2 * cfg.kv_size, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        # QK-norm: RMSNorm over each head's channels bounds the attention logits (OLMo 2, Qwen3).
        self.q_norm = RMSNorm(cfg.head_size, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_size, cfg.norm_eps) if cfg.qk_norm else None
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.dropout = cfg.dropout
        self.use_rope = cfg.pos_emb == "rope"

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        attn_mask: torch.Tensor | None = None,
        kv_cache: dict[str, torch.Tensor] | None = None,
        ve: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        hs, kv = self.head_size, self.n_kv_head
        q, k, v = self.c_attn(x).split([C, kv * hs, kv * hs], dim=2)
        if ve is not None:  # value embeddings (B, T, kv * hs), already gated
            v = v + ve
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, kv, hs).transpose(1, 2)  # (B, n_kv, T, hs)
        v = v.view(B, T, kv, hs).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.use_rope and rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        is_causal = attn_mask is None
        if kv_cache is not None:
            # The cache holds only the n_kv_head key/value heads: GQA's memory saving.
            if "k" in kv_cache:
                k = torch.cat([kv_cache["k"], k], dim=2)
                v = torch.cat([kv_cache["v"], v], dim=2)
            kv_cache["k"], kv_cache["v"] = k, v
            if T == 1:
                is_causal = False  # one new query attends to every cached key
            elif k.shape[2] != T:
                # Several new tokens on top of a cache: causal relative to their position.
                past = k.shape[2] - T
                attn_mask = torch.ones(T, k.shape[2], dtype=torch.bool, device=x.device).tril(past)
                is_causal = False
        y = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
            enable_gqa=kv != self.n_head,  # each K/V head serves n_head / n_kv_head query heads
        )  # (B, nh, T, hs): flash / memory-efficient kernels where the device has them
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        self.relu2 = cfg.mlp == "relu2"
        width = cfg.d_ff * 2 if self.swiglu else cfg.d_ff
        self.c_fc = nn.Linear(cfg.n_embd, width, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.d_ff, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif self.relu2:
            h = F.relu(h).square()  # ReLU²: sparse and cheap (Primer; modded-nanogpt)
        else:
            h = F.gelu(h, approximate="tanh")
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x, rope=None, attn_mask=None, kv_cache=None, ve=None):
        x = x + self.attn(self.ln_1(x), rope, attn_mask, kv_cache, ve)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos_emb == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.value_embeds = (ValueEmbeddings(cfg.value_embeds, cfg.n_layer, cfg.vocab_size, cfg.kv_size)
                             if cfg.value_embeds else None)
        self.unet = UNetSkips(cfg.n_layer) if cfg.unet_skips else None
        self.ln_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight
        if cfg.pos_emb == "rope":
            cos, sin = rope_cache(cfg.head_size, cfg.block_size, cfg.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # GPT-2's scaled init of residual projections: keeps the residual stream's variance flat with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; by default without position embeddings (nanoGPT's convention).

        Token embeddings stay counted because, tied, they are also the output layer.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:  # position and value embeddings are lookups only
            n -= sum(t.weight.numel() for t in [self.wpe, *(self.value_embeds.tables if self.value_embeds else [])]
                     if t is not None)
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token, nanoGPT's estimate: 6N + 12 * L * H * Q * T.

        6N for the forward and backward matrix products, plus attention's score and value
        products over a context of T tokens (Q = head size).
        """
        c = self.config
        T = seq_len or c.block_size
        return 6 * self.num_params() + 12 * c.n_layer * c.n_head * c.head_size * T

    def hidden_states(
        self,
        idx: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        kv_caches: list[dict[str, torch.Tensor]] | None = None,
        start_pos: int = 0,
    ) -> torch.Tensor:
        """Final-norm hidden states (B, T, C).

        padding_mask: (B, T) bool, True at real tokens. Padded keys are masked out for every
        query; with right padding (our layout) causality already hides them from real tokens,
        so the mask matters for left padding and for keeping padded queries finite.
        """
        B, T = idx.shape
        end = start_pos + T
        if end > self.config.block_size:
            raise ValueError(f"sequence length {end} exceeds block_size {self.config.block_size}")
        x = self.wte(idx)  # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(start_pos, end, device=idx.device))
        x = self.drop(x)
        rope = None
        if self.config.pos_emb == "rope":
            rope = (self.rope_cos[start_pos:end], self.rope_sin[start_pos:end])
        attn_mask = None
        if padding_mask is not None and kv_caches is None:
            causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
            # (B, 1, T, T): query i may see key j if j <= i and j is real; the diagonal stays
            # open so that a padded query still has one key and SDPA never returns NaN.
            diag = torch.eye(T, dtype=torch.bool, device=idx.device)
            attn_mask = ((causal & padding_mask[:, None, None, :]) | diag)
        ves = self.value_embeds(idx) if self.value_embeds is not None else [None] * len(self.h)
        saved: list[torch.Tensor] = []  # U-net: first-half outputs
        for i, block in enumerate(self.h):
            cache = kv_caches[i] if kv_caches is not None else None
            if self.unet is not None:
                x = self.unet.before(i, x, saved)
            if self.config.activation_checkpointing and self.training and cache is None:
                x = checkpoint(block, x, rope, attn_mask, None, ves[i], use_reentrant=False)
            else:
                x = block(x, rope, attn_mask, cache, ves[i])
            if self.unet is not None:
                self.unet.after(i, x, saved)
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor, padding_mask: torch.Tensor | None = None, return_hidden: bool = False):
        """Logits (B, T, vocab_size); with return_hidden, also the final hidden states (B, T, C).

        Task heads read the hidden states through this call (not ``hidden_states``) so that a
        compiled model (``model.compile()``) covers the whole network.
        """
        h = self.hidden_states(idx, padding_mask)
        logits = self.logits(h)
        return (logits, h) if return_hidden else logits

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Output logits from final hidden states; soft-capped when ``logit_softcap`` is set."""
        logits = self.lm_head(h)
        cap = self.config.logit_softcap
        if cap:
            # Smoothly bounds every logit to (-cap, cap) (Gemma 2, modded-nanogpt).
            logits = cap * torch.tanh(logits / cap)
        return logits

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Sample continuations of idx (B, T) with a KV cache; returns (B, T + max_new_tokens).

        When the context would outgrow block_size the cache is dropped and the window slides.
        """
        was_training = self.training
        self.eval()
        caches: list[dict[str, torch.Tensor]] | None = None
        pos = 0
        for _ in range(max_new_tokens):
            if use_cache and caches is not None and idx.shape[1] <= self.config.block_size:
                x = self.hidden_states(idx[:, -1:], kv_caches=caches, start_pos=pos)
            else:
                ctx = idx[:, -self.config.block_size :]
                caches = [{} for _ in self.h] if use_cache else None
                x = self.hidden_states(ctx, kv_caches=caches)
                pos = ctx.shape[1] - 1
            pos += 1
            logits = self.logits(x[:, -1, :]).float()  # (B, vocab)
            next_tok = sample_token(logits, temperature, top_k, top_p, generator)
            idx = torch.cat([idx, next_tok], dim=1)
        self.train(was_training)
        return idx


def sample_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row from logits (B, V): greedy at temperature 0, else top-k / nucleus sampling."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    candidates = None  # (B, k) vocabulary ids when sampling among the top k only
    if top_k and top_k < logits.shape[-1]:
        # Sample among the k best only: sorting and softmax over k entries instead of the whole
        # vocabulary keeps per-token cost flat for 50k-token vocabularies.
        logits, candidates = torch.topk(logits, top_k)  # sorted, descending
    if top_p is not None and top_p < 1.0:
        if candidates is None:
            logits, candidates = logits.sort(dim=-1, descending=True)
        probs = logits.softmax(-1)
        # Drop a token when the mass before it already reaches top_p (always keep the first).
        logits = logits.masked_fill((probs.cumsum(-1) - probs) >= top_p, float("-inf"))
    choice = torch.multinomial(logits.softmax(-1), 1, generator=generator)
    return choice if candidates is None else candidates.gather(-1, choice)
