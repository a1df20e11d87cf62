"""Muon for the hidden matrices, AdamW for everything else, as one torch optimizer.

``optimizer=muon`` (conf/optimizer/muon.yaml). Muon (``torch.optim.Muon``) orthogonalises the
momentum of each 2-D weight with a few Newton-Schulz iterations; it is meant for the hidden
layers only. Here that is every ``nn.Linear`` weight inside the transformer blocks (attention
``c_attn``/``c_proj``, MLP ``c_fc``/``c_proj``). AdamW keeps the rest: the embeddings, the
output head (tied to ``wte`` by default), norms, biases, qk-norm weights and task heads.

Lightning, the lr scheduler, gradient clipping, the gradient scaler and the anomaly guard see
one :class:`MuonAdamW`. Its ``param_groups`` are the two inner optimizers' own group dicts
(AdamW's first), so a scheduler multiplies both by the same factor; every group says which
optimizer owns it (``"optimizer"``) and its lr relative to ``optimizer.lr`` (``"lr_scale"``).
The inner optimizers share this optimizer's ``state``, so ``state_dict`` is torch's usual
format and a checkpoint resumes bitwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from lm_lightning.model import BLOCK_PARAM as BLOCK
from lm_lightning.optim.groups import matrix_weights
from lm_lightning.optim.muon_ns import Muon, check_options, run_closure

ADJUST_LR_FNS = ("original", "match_rms_adamw")


def split_params(model: torch.nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """(Muon, AdamW with decay, AdamW without decay) trainable parameters.

    Muon: Linear weights inside the blocks (``h.<i>.``). AdamW with decay: the other Linear and
    Embedding weights (wte, wpe, an untied lm_head, task heads). Without decay: norms, biases.
    Tied tensors appear once (``named_parameters`` de-duplicates them).
    """
    hidden = {id(m.weight) for name, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and BLOCK.search(name + ".")}
    matrices = matrix_weights(model)
    muon, decay, no_decay = [], [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (muon if id(p) in hidden else decay if id(p) in matrices else no_decay).append(p)
    return muon, decay, no_decay


def check_no_layer_decay(layer_decay: Any) -> None:
    """Muon sets its own per-shape lr scale: layer-wise decay does not combine with it."""
    if layer_decay not in (None, 1, 1.0):
        raise ValueError("optimizer=muon does not support optimizer.layer_decay (leave it null)")


def check(opt_cfg: Mapping[str, Any], strategy: Any = None) -> None:
    """Validate ``optimizer=muon`` keys and what it combines with (raises ValueError, one line)."""
    check_no_layer_decay(opt_cfg.get("layer_decay"))
    for key in ("lr", "muon_lr"):
        if key in opt_cfg and not float(opt_cfg[key]) > 0:
            raise ValueError(f"optimizer.{key} must be positive, got {opt_cfg[key]}")
    fn = opt_cfg.get("muon_adjust_lr_fn", "original")
    if fn is not None and fn not in ADJUST_LR_FNS:
        raise ValueError(f"optimizer.muon_adjust_lr_fn must be one of {', '.join(ADJUST_LR_FNS)}, got {fn!r}")
    if not 0.0 <= float(opt_cfg.get("muon_momentum", 0.95)) < 1.0:
        raise ValueError(f"optimizer.muon_momentum must be in [0, 1), got {opt_cfg.get('muon_momentum')}")
    if not 1 <= int(opt_cfg.get("muon_ns_steps", 5)) < 100:
        raise ValueError(f"optimizer.muon_ns_steps must be in [1, 99], got {opt_cfg.get('muon_ns_steps')}")
    check_options(opt_cfg.get("muon_ns_dtype", "auto"), opt_cfg.get("muon_momentum_warmup_steps", 0),
                  opt_cfg.get("muon_momentum_start", 0.85))
    for key in ("embed_lr", "head_lr"):
        if opt_cfg.get(key) is not None and not float(opt_cfg[key]) > 0:
            raise ValueError(f"optimizer.{key} must be positive (or null: optimizer.lr), got {opt_cfg[key]}")
    target = strategy.get("_target_", "") if hasattr(strategy, "get") else strategy
    # FSDP1 (FSDPStrategy, Lightning's "fsdp" names) hands the optimizer flat 1-D shards. FSDP2
    # (trainer=fsdp: FSDP2Strategy / ModelParallelStrategy) hands it 2-D DTensors: Muon's
    # Newton-Schulz runs on them as on whole matrices (DTensor gathers what a product needs).
    from lm_lightning.run.distributed import is_fsdp1

    if is_fsdp1(target or ""):
        raise ValueError("optimizer=muon needs whole 2-D weight matrices and FSDP1 hands the optimizer flat "
                         "shards; use trainer=fsdp (FSDP2), DDP (trainer=ddp) or another optimizer")


class MuonAdamW(torch.optim.Optimizer):
    """``torch.optim.Muon`` on ``muon_params`` and ``torch.optim.AdamW`` on ``adamw_groups``.

    ``lr`` is AdamW's learning rate and the base the schedulers' ``min_lr`` refers to;
    ``muon_lr`` is Muon's (before its per-shape ``adjust_lr_fn`` factor). Weight decay is
    decoupled in both: ``weight_decay`` for AdamW's decay group, ``muon_weight_decay`` for Muon
    (each multiplied by its own lr).
    """

    def __init__(self, muon_params: Iterable[torch.Tensor], adamw_groups: Iterable[dict[str, Any]],
                 lr: float = 3e-3, betas: tuple[float, float] = (0.9, 0.99), eps: float = 1e-8,
                 weight_decay: float = 0.1, muon_lr: float = 0.02, muon_momentum: float = 0.95,
                 muon_nesterov: bool = True, muon_weight_decay: float = 0.0, muon_ns_steps: int = 5,
                 muon_adjust_lr_fn: str | None = "original", fused: bool | None = None,
                 muon_ns_dtype: str = "auto", muon_momentum_warmup_steps: int = 0,
                 muon_momentum_start: float = 0.85) -> None:
        muon_params = list(muon_params)
        flat = [tuple(p.shape) for p in muon_params if p.ndim != 2]
        if flat:
            raise ValueError(f"optimizer=muon needs whole 2-D weight matrices, got a tensor of shape {flat[0]} "
                             "(FSDP1 hands the optimizer flat shards; use trainer=fsdp (FSDP2), DDP or another optimizer)")
        adamw_groups = [dict(g, weight_decay=g.get("weight_decay", weight_decay)) for g in adamw_groups]
        adamw_groups = [g for g in adamw_groups if g["params"]]
        self.adamw = torch.optim.AdamW(adamw_groups, lr=float(lr), betas=tuple(betas), eps=float(eps),
                                       weight_decay=float(weight_decay), fused=fused)
        inner = [self.adamw]
        self.muon = None
        if muon_params:
            # torch's Muon step with the Newton-Schulz dtype per device and a momentum warmup (muon_ns.py)
            self.muon = Muon(muon_params, lr=float(muon_lr), weight_decay=float(muon_weight_decay),
                             momentum=float(muon_momentum), nesterov=bool(muon_nesterov),
                             ns_steps=int(muon_ns_steps), adjust_lr_fn=muon_adjust_lr_fn, ns_dtype=muon_ns_dtype,
                             momentum_warmup_steps=int(muon_momentum_warmup_steps or 0),
                             momentum_start=float(muon_momentum_start))
            inner.append(self.muon)
        for opt, name, scale in ((self.adamw, "adamw", 1.0), (self.muon, "muon", float(muon_lr) / float(lr))):
            for g in opt.param_groups if opt is not None else []:
                # a group with its own lr (optimizer.embed_lr / head_lr) keeps its ratio to optimizer.lr
                g["optimizer"], g["lr_scale"] = name, scale if name == "muon" else float(g["lr"]) / float(lr)
        # No "fused" here: Lightning's own clipping path runs (LMModule.configure_gradient_clipping),
        # and the anomaly guard decides skips on the host (Muon has no found_inf).
        super().__init__([g for opt in inner for g in opt.param_groups], {"lr": float(lr), "muon_lr": float(muon_lr)})
        self._share()

    def _share(self) -> None:
        """Point the inner optimizers at this optimizer's group dicts and state."""
        self.adamw.param_groups = [g for g in self.param_groups if g["optimizer"] == "adamw"]
        self.adamw.state = self.state
        if self.muon is not None:
            self.muon.param_groups = [g for g in self.param_groups if g["optimizer"] == "muon"]
            self.muon.state = self.state

    @classmethod
    def from_model(cls, model: torch.nn.Module, weight_decay: float = 0.1, embed_lr: float | None = None,
                   head_lr: float | None = None, **kwargs: Any) -> MuonAdamW:
        """Groups from the model; ``embed_lr`` (the Embedding tables: wte, wpe, value embeddings) and
        ``head_lr`` (an untied ``lm_head``) give those AdamW matrices their own lr (null: ``lr``).
        Tied, the head is ``wte`` and follows ``embed_lr``."""
        muon, decay, no_decay = split_params(model)
        groups = [{"params": decay, "weight_decay": float(weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]
        tables = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
        own = dict.fromkeys(tables, float(embed_lr)) if embed_lr is not None else {}
        heads = [m.lm_head.weight for m in model.modules() if isinstance(getattr(m, "lm_head", None), torch.nn.Linear)]
        if head_lr is not None:
            own.update({id(w): float(head_lr) for w in heads if id(w) not in tables})  # tied: the table's lr
        for group_lr in sorted(set(own.values())):
            mine = [p for p in decay if own.get(id(p)) == group_lr]
            groups.append({"params": mine, "weight_decay": float(weight_decay), "lr": group_lr})
        groups[0]["params"] = [p for p in decay if id(p) not in own]
        return cls(muon, groups, weight_decay=weight_decay, **kwargs)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        # Lightning's closure runs forward, backward, the before-step hooks and clipping: once,
        # before either inner optimizer steps.
        loss = run_closure(closure)
        self.adamw.step()
        if self.muon is not None:
            self.muon.step()
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Rebuilds self.param_groups and self.state (cast to each parameter's device and dtype,
        # as the inner optimizers' own load would): share the new ones again.
        super().load_state_dict(state_dict)
        self._share()
