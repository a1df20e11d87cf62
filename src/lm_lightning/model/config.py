"""The model's shape and switches (:class:`ModelConfig`) and the one rule for naming block parameters."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

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
