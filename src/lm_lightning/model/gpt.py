"""One readable decoder-only transformer in plain PyTorch (:class:`GPT`) and token sampling.

Nothing here knows about Lightning, Hydra or tasks: the LightningModule wraps :class:`GPT` with task
heads and losses.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from lm_lightning.model.config import ModelConfig
from lm_lightning.model.layers import Block, make_norm, rope_cache
from lm_lightning.model.skips import UNetSkips, ValueEmbeddings


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
