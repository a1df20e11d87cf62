"""The transformer's parts: norms, rotary embeddings, causal self-attention, the MLP and a block.

Shapes are commented as (B, T, C) = (batch, time, channels); nh = heads, hs = head size.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lm_lightning.model.config import ModelConfig


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
    # each head's query/key rows, so convert/llama.py permutes those rows when converting and this
    # one model reproduces LlamaForCausalLM exactly (q.k is unchanged by a shared permutation).
    if _complex_rotation(x):
        # The same rotation as one complex product per pair, forward and backward: about a quarter
        # of the time of the real arithmetic below on a CPU (8 of them per step of the speedrun).
        pairs = torch.view_as_complex(x.unflatten(-1, (-1, 2)))
        return torch.view_as_real(pairs * torch.complex(cos.to(x.dtype), sin.to(x.dtype))).flatten(-2)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2)


def _complex_rotation(x: torch.Tensor) -> bool:
    """Complex arithmetic for the rotation: eager fp32/fp64 on a CPU, where a pair can be viewed as one
    complex number in place (no bf16 complex type; compilers and accelerators keep the real form)."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.stride(-1) == 1
            and x.storage_offset() % 2 == 0 and all(st % 2 == 0 for st in x.stride()[:-1])
            and not torch.compiler.is_compiling())


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


class ReLUSquared(torch.autograd.Function):
    """relu(h)² with its gradient written out: 2 relu(h) g (zero where h <= 0, so no mask pass).

    The same values and gradients as ``F.relu(h).square()`` under autograd, which runs a square's
    backward and then a threshold mask: this saves two elementwise passes over the (B, T, 4C) hidden
    activations, about 3 of the speedrun's 75 ms per forward-backward on a 2-core CPU.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor) -> torch.Tensor:
        r = torch.relu(h)
        ctx.save_for_backward(r)
        return r * r

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (r,) = ctx.saved_tensors
        return (grad * r).mul_(2.0)


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
            h = ReLUSquared.apply(h)  # ReLU²: sparse and cheap (Primer; modded-nanogpt)
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
