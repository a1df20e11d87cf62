"""From Hydra's optimizer factory to the run's optimizer: techniques, groups, the fused kernel.

Optimizers come from Hydra as ``_partial_`` factories. The techniques (``lookahead``,
``layer_decay``, ``freeze_embeddings``, ``freeze_layers``) are keys of the optimizer config
that :func:`build_optimizer` takes out before calling the torch optimizer; :func:`use_fused`
is the one place that decides whether Adam/AdamW (plain, or inside ``MuonAdamW``) runs its
fused kernel.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch

from lm_lightning.optim import muon
from lm_lightning.optim.groups import check_freeze_layers, check_layer_decay, freeze, param_groups
from lm_lightning.optim.lookahead import Lookahead

TECHNIQUE_KEYS = ("lookahead", "layer_decay", "freeze_embeddings", "freeze_layers")


def use_fused(device: torch.device, precision: str = "32-true", sharded: bool = False) -> bool:
    """Does torch's Adam/AdamW get ``fused=True`` (when the config leaves ``optimizer.fused`` null)?

    Fused kernels: one launch for all parameters instead of a loop per tensor, on CUDA and on
    the CPU (4-5x faster steps there than the per-tensor loop, BENCHMARKS.md). A fused step can
    also be skipped on the device (the anomaly guard's found_inf). Not under fp16 loss scaling:
    a fused optimizer unscales gradients inside its step, after clipping would already have
    seen them scaled. Not under FSDP, whose gradients are shards: Lightning's own clipping
    (FSDP's clip_grad_norm_) must run there, and it refuses fused optimizers.
    """
    return str(precision) != "16-mixed" and not sharded and device.type in ("cuda", "cpu")


def keep_fused_choice(optimizer: torch.optim.Optimizer) -> None:
    """Put this run's fused-kernel choice back into ``optimizer``'s param groups.

    A resumed optimizer takes its param-group flags from the checkpoint; a checkpoint from another
    strategy (FSDP2 steps unfused, one process fused) would switch the kernel this run chose (and
    that clipping and the anomaly guard are set up for). ``defaults`` keeps this run's choice.
    """
    inner = [optimizer.adamw] if isinstance(optimizer, muon.MuonAdamW) else []
    for opt in (*inner, optimizer):
        if "fused" in opt.defaults:
            for group in opt.param_groups:
                if "fused" in group:
                    group["fused"] = opt.defaults["fused"]


def split_techniques(factory: Callable[..., torch.optim.Optimizer]) -> tuple[Callable, dict[str, Any]]:
    """Separate the technique keys from the torch optimizer's own arguments."""
    keywords = dict(getattr(factory, "keywords", {}) or {})
    techniques = {k: keywords.pop(k) for k in TECHNIQUE_KEYS if k in keywords}
    func = getattr(factory, "func", factory)
    args = getattr(factory, "args", ())
    return functools.partial(func, *args, **keywords), techniques


def check_techniques(opt_cfg: Mapping[str, Any], n_layer: int, strategy: Any = None) -> None:
    """Validate technique values against the model before any expensive work (raises ValueError).

    ``strategy`` is the trainer's (a name or a config with ``_target_``): optimizer=muon refuses FSDP.
    """
    from lm_lightning.optim.targets import check_target_keys

    check_target_keys("optimizer", opt_cfg, ignore=TECHNIQUE_KEYS)
    if str(opt_cfg.get("_target_", "")).endswith("MuonAdamW"):
        muon.check(opt_cfg, strategy)
    la = opt_cfg.get("lookahead") or {}
    if la and int(la.get("k", 0) or 0) > 0:
        Lookahead.check(int(la["k"]), float(la.get("alpha", 0.5)))
    check_layer_decay(opt_cfg.get("layer_decay"))
    check_freeze_layers(opt_cfg.get("freeze_layers"), n_layer)


def build_optimizer(factory: Callable[..., torch.optim.Optimizer], model: torch.nn.Module,
                    device: torch.device, precision: str = "32-true", sharded: bool = False) -> torch.optim.Optimizer:
    """Call a (partial) optimizer factory with decay/no-decay groups; fused Adam(W) per :func:`use_fused`.

    Applies the techniques found in the factory's keywords: freezing, layer-wise lr decay and
    the Lookahead wrapper. ``MuonAdamW`` (optimizer=muon) makes its own groups (``from_model``).
    ``precision`` and ``sharded`` (an FSDP strategy) are the trainer's.
    """
    factory, techniques = split_techniques(factory)
    keywords = dict(factory.keywords)
    lr = keywords.get("lr")
    if lr is not None and not float(lr) > 0:
        raise ValueError(f"optimizer.lr must be positive, got {lr}")
    if techniques.get("freeze_embeddings") or int(techniques.get("freeze_layers") or 0):
        freeze(model, bool(techniques.get("freeze_embeddings")), int(techniques.get("freeze_layers") or 0))
    fused = use_fused(device, precision, sharded)
    target = factory.func
    if isinstance(target, type) and issubclass(target, muon.MuonAdamW):  # chooses its own parameter groups
        muon.check_no_layer_decay(techniques.get("layer_decay"))
        if keywords.get("fused") is None:  # the inner AdamW, as for optimizer=adamw
            keywords["fused"] = fused
        optimizer = target.from_model(model, **keywords)
    else:
        groups = param_groups(model, float(keywords.get("weight_decay", 0.0)), techniques.get("layer_decay"),
                              float(lr) if lr is not None else None)
        extra = {}
        if target in (torch.optim.AdamW, torch.optim.Adam) and keywords.get("fused") is None:
            extra["fused"] = fused
        optimizer = factory(groups, **extra)
    la = techniques.get("lookahead") or {}
    if la and int(la.get("k", 0) or 0) > 0:
        optimizer = Lookahead(optimizer, k=int(la["k"]), alpha=float(la.get("alpha", 0.5)))
    return optimizer
