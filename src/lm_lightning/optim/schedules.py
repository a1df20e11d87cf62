"""Parameter groups, optimizer techniques and learning-rate schedules.

Optimizers and schedulers come from Hydra as ``_partial_`` factories; this module decides
which parameters get weight decay, which are frozen, how the learning rate scales per layer
and what the schedule looks like over optimizer steps. The techniques (``lookahead``,
``layer_decay``, ``freeze_embeddings``, ``freeze_layers``) are keys of the optimizer config
that :func:`build_optimizer` takes out before calling the torch optimizer.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from lm_lightning.lookahead import Lookahead
from lm_lightning.model import BLOCK_PARAM

TECHNIQUE_KEYS = ("lookahead", "layer_decay", "freeze_embeddings", "freeze_layers")
_EMBEDDING = re.compile(r"(?:^|\.)(wte|wpe)\.")


def layer_id(name: str, n_layer: int) -> int:
    """0 for embeddings, i + 1 for block i, n_layer + 1 for the final norm and the heads.

    Works on names with wrapper prefixes (``model.``, ``_orig_mod.``) because it matches path parts.
    """
    if _EMBEDDING.search(name):
        return 0
    m = BLOCK_PARAM.search(name)
    if m:
        return int(m.group(1)) + 1
    return n_layer + 1


def _n_layer(model: torch.nn.Module) -> int:
    ids = [int(m.group(1)) for n, _ in model.named_parameters() if (m := BLOCK_PARAM.search(n))]
    return max(ids) + 1 if ids else 0


def freeze(model: torch.nn.Module, embeddings: bool = False, layers: int = 0) -> int:
    """Discriminative fine-tuning: stop gradients to the embeddings and blocks ``0..layers-1``.

    With tied weights the output head shares the token embedding, so freezing embeddings freezes
    it too. Returns the number of frozen tensors.
    """
    n_layer = _n_layer(model)
    if layers < 0 or layers > n_layer:
        raise ValueError(f"optimizer.freeze_layers must be in [0, {n_layer}] (the model's layers), got {layers}")
    frozen = 0
    for name, p in model.named_parameters():
        lid = layer_id(name, n_layer)
        if (embeddings and lid == 0) or 1 <= lid <= layers:
            p.requires_grad_(False)
            frozen += 1
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("every parameter is frozen; lower optimizer.freeze_layers or unset freeze_embeddings")
    return frozen


def param_groups(model: torch.nn.Module, weight_decay: float, layer_decay: float | None = None,
                 lr: float | None = None) -> list[dict[str, Any]]:
    """Weight decay on matrices only: Linear and Embedding weights; biases and norm weights
    are excluded. Chosen by module type rather than ``p.dim() >= 2`` because under FSDP the
    optimizer sees flattened 1-D shards of every weight.

    Tied weights appear once because ``named_parameters`` de-duplicates shared tensors. With
    ``layer_decay`` (and ``lr``), each layer gets its own groups at ``lr * layer_decay ** depth``,
    depth counted from the top: the head and final norm learn at ``lr``, the last block at
    ``lr * layer_decay``, ..., the embeddings at ``lr * layer_decay ** (n_layer + 1)``.
    """
    matrices = {id(m.weight) for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))}
    if layer_decay is None or float(layer_decay) == 1.0:
        decay, no_decay = [], []
        for _, p in model.named_parameters():
            if not p.requires_grad:
                continue
            (decay if id(p) in matrices else no_decay).append(p)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
    if not 0.0 < float(layer_decay) <= 1.0:
        raise ValueError(f"optimizer.layer_decay must be in (0, 1], got {layer_decay}")
    if lr is None:
        raise ValueError("layer_decay needs the base learning rate")
    n_layer = _n_layer(model)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lid = layer_id(name, n_layer)
        decays = id(p) in matrices
        scale = float(layer_decay) ** (n_layer + 1 - lid)
        g = groups.setdefault((lid, decays), {"params": [], "weight_decay": weight_decay if decays else 0.0,
                                              "lr": lr * scale, "lr_scale": scale, "layer": lid})
        g["params"].append(p)
    return [groups[k] for k in sorted(groups)]


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
    if str(opt_cfg.get("_target_", "")).endswith("MuonAdamW"):
        from lm_lightning import muon

        muon.check(opt_cfg, strategy)
    la = opt_cfg.get("lookahead") or {}
    if la and int(la.get("k", 0) or 0) > 0:
        Lookahead.check(int(la["k"]), float(la.get("alpha", 0.5)))
    decay = opt_cfg.get("layer_decay")
    if decay is not None and not 0.0 < float(decay) <= 1.0:
        raise ValueError(f"optimizer.layer_decay must be in (0, 1], got {decay}")
    layers = int(opt_cfg.get("freeze_layers") or 0)
    if not 0 <= layers <= n_layer:
        raise ValueError(f"optimizer.freeze_layers must be in [0, {n_layer}] (model.n_layer), got {layers}")


def total_grad_norm(params) -> torch.Tensor | None:
    """The 2-norm over every gradient of ``params`` as one device tensor (no sync); None without any."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    sharded = _dtensor_mesh(grads)
    if sharded is not None:
        # FSDP2: every gradient is a DTensor sharded over the data-parallel mesh. The norm of the
        # local shards, squared and summed over the ranks: one all-reduce, the same on every rank.
        import torch.distributed as dist

        local = [g.to_local() for g in grads]
        sq = torch.linalg.vector_norm(torch.stack([n.float() for n in torch._foreach_norm(local)])) ** 2
        dist.all_reduce(sq, group=sharded.get_group())
        return sq.sqrt()
    return torch.linalg.vector_norm(torch.stack([n.float() for n in torch._foreach_norm(grads)]))


def _dtensor_mesh(tensors):
    """The (1-D, sharded) device mesh of DTensor gradients, or None for plain tensors."""
    first = tensors[0]
    if type(first).__name__ != "DTensor":
        return None
    from torch.distributed.tensor import Shard

    if first.device_mesh.ndim != 1 or not all(isinstance(pl, Shard) for t in tensors for pl in t.placements):
        raise NotImplementedError("gradient norms of DTensors other than 1-D sharded ones")
    return first.device_mesh


def build_optimizer(factory: Callable[..., torch.optim.Optimizer], model: torch.nn.Module,
                    device: torch.device, allow_fused: bool = True) -> torch.optim.Optimizer:
    """Call a (partial) optimizer factory with decay/no-decay groups; fused Adam(W).

    Applies the techniques found in the factory's keywords: freezing, layer-wise lr decay and
    the Lookahead wrapper. A factory class with ``from_model`` (MuonAdamW) makes its own groups. ``allow_fused=False`` under fp16 loss scaling: a fused optimizer
    unscales gradients inside its step, after clipping would already have seen them scaled.
    """
    factory, techniques = split_techniques(factory)
    keywords = dict(factory.keywords)
    lr = keywords.get("lr")
    if lr is not None and not float(lr) > 0:
        raise ValueError(f"optimizer.lr must be positive, got {lr}")
    if techniques.get("freeze_embeddings") or int(techniques.get("freeze_layers") or 0):
        freeze(model, bool(techniques.get("freeze_embeddings")), int(techniques.get("freeze_layers") or 0))
    if hasattr(factory.func, "from_model"):  # optimizer=muon: chooses its own parameter groups
        if techniques.get("layer_decay") not in (None, 1, 1.0):
            raise ValueError("optimizer=muon does not support optimizer.layer_decay (leave it null)")
        if keywords.get("fused") is None:  # the inner AdamW, as for optimizer=adamw
            keywords["fused"] = allow_fused and device.type in ("cuda", "cpu")
        optimizer = factory.func.from_model(model, **keywords)
    else:
        optimizer = _grouped(factory, keywords, model, device, allow_fused, techniques)
    la = techniques.get("lookahead") or {}
    if la and int(la.get("k", 0) or 0) > 0:
        optimizer = Lookahead(optimizer, k=int(la["k"]), alpha=float(la.get("alpha", 0.5)))
    return optimizer


def _grouped(factory, keywords, model, device, allow_fused, techniques) -> torch.optim.Optimizer:
    lr = keywords.get("lr")
    groups = param_groups(model, float(keywords.get("weight_decay", 0.0)), techniques.get("layer_decay"),
                          float(lr) if lr is not None else None)
    extra: dict[str, Any] = {}
    target = factory.func
    if target in (torch.optim.AdamW, torch.optim.Adam) and keywords.get("fused") is None:
        # Fused kernels: one launch for all parameters instead of a loop per tensor, on CUDA
        # and on the CPU (4-5x faster steps there than the per-tensor loop, BENCHMARKS.md).
        # A fused step can also be skipped on the device (the anomaly guard's found_inf).
        extra["fused"] = allow_fused and device.type in ("cuda", "cpu")
    return factory(groups, **extra)


def _base_lr(optimizer: torch.optim.Optimizer) -> float:
    # With layer-wise decay param_groups[0] is the embeddings' scaled lr; the constructor's lr is the top.
    return float(optimizer.defaults.get("lr", optimizer.param_groups[0]["lr"]))


class WarmupCosine:
    """Multiplier for LambdaLR: linear warmup to 1, then cosine decay to ``floor``.

    A plain callable object (not a lambda) so that LambdaLR can store its state in checkpoints.
    """

    def __init__(self, warmup_steps: int, total_steps: int, floor: float) -> None:
        self.warmup_steps = max(0, int(warmup_steps))
        self.total_steps = max(1, int(total_steps))
        self.floor = float(floor)

    def __call__(self, step: int) -> float:
        if getattr(self, "refit", None) is not None and step >= self.refit[0]:
            return self._refitted(step)
        if step < self.warmup_steps:  # the one warmup of every schedule here
            return (step + 1) / (self.warmup_steps + 1)
        return self.after_warmup(step)

    def _progress(self, step: int) -> float:
        """How far into the decay (0..1) ``step`` is, the decay running from warmup to the end."""
        return min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))

    def after_warmup(self, step: int) -> float:
        return self.floor + (1.0 - self.floor) * self.left(self._progress(step))

    # -- a new horizon for a resumed run ----------------------------------------------------
    def left(self, progress: float) -> float:
        """The share of the decay still ahead at ``progress`` (0..1) of it: this schedule's shape."""
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def _refitted(self, step: int) -> float:
        start, value = self.refit
        progress = min(1.0, (step - start) / max(1, self.total_steps - start))
        return self.floor + (value - self.floor) * self.left(progress)

    def refit_to(self, step: int, total_steps: int) -> float | None:
        """End at ``total_steps`` instead, carrying on from ``step`` without a jump: from the
        multiplier it has at ``step``, the same shape of decay to ``floor`` over the steps left.
        Within the warmup (or WSD's stable stage) only the end moves. Returns the multiplier
        at ``step``; None when nothing changes. The state is plain attributes, so LambdaLR's
        state_dict carries it into the next checkpoint."""
        total_steps = int(total_steps)
        if total_steps == self.total_steps or total_steps <= step:
            return None
        value = self(step)
        if step < self.warmup_steps or self._stable_at(step, total_steps):
            self.total_steps, self.refit = total_steps, None
        else:
            self.total_steps, self.refit = total_steps, (int(step), float(value))
        return value

    def _stable_at(self, step: int, total_steps: int) -> bool:
        return False


class WarmupLinear(WarmupCosine):
    """Linear warmup to 1, then linear decay to ``floor`` at ``total_steps``."""

    def left(self, progress: float) -> float:
        return 1.0 - progress

    def after_warmup(self, step: int) -> float:
        return 1.0 - (1.0 - self.floor) * self._progress(step)


class WarmupConstant(WarmupCosine):
    """Linear warmup to 1, then constant."""

    def after_warmup(self, step: int) -> float:
        return 1.0

    def _stable_at(self, step: int, total_steps: int) -> bool:
        return True  # nothing decays: only the end moves


class WarmupStableDecay(WarmupCosine):
    """WSD: linear warmup to 1, constant, then decay to ``floor`` over the last ``decay_fraction``
    of ``total_steps`` (never into the warmup). ``shape``: linear, cosine or 1-sqrt (1 - sqrt(progress)).

    The decay start is derived from ``total_steps``, so fit_to_time (which resizes
    ``total_steps``) moves it: the decay then ends at the time budget.
    """

    SHAPES = ("linear", "cosine", "1-sqrt")

    def __init__(self, warmup_steps: int, total_steps: int, floor: float, decay_fraction: float = 0.2,
                 shape: str = "linear") -> None:
        super().__init__(warmup_steps, total_steps, floor)
        self.check(decay_fraction, shape)
        self.decay_fraction, self.shape = float(decay_fraction), str(shape)

    @classmethod
    def check(cls, decay_fraction: Any, shape: Any) -> None:
        if not 0.0 < float(decay_fraction) <= 1.0:
            raise ValueError(f"scheduler.decay_fraction must be in (0, 1], got {decay_fraction}")
        if shape not in cls.SHAPES:
            raise ValueError(f"scheduler.shape must be one of {', '.join(cls.SHAPES)}, got {shape!r}")

    @property
    def decay_start(self) -> int:
        return max(self.warmup_steps, self.total_steps - round(self.decay_fraction * self.total_steps))

    def after_warmup(self, step: int) -> float:
        start = self.decay_start
        if step < start:
            return 1.0
        progress = min(1.0, (step - start) / max(1, self.total_steps - start))
        return self.floor + (1.0 - self.floor) * self.left(progress)

    def left(self, progress: float) -> float:
        if self.shape == "linear":
            return 1.0 - progress
        if self.shape == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - math.sqrt(progress)

    def _stable_at(self, step: int, total_steps: int) -> bool:
        # Before the new horizon's decay start the run is (again) in the stable stage.
        return step < max(self.warmup_steps, total_steps - round(self.decay_fraction * total_steps))


def _floor(optimizer: torch.optim.Optimizer, min_lr: float | None, min_lr_ratio: float) -> float:
    base_lr = _base_lr(optimizer)
    floor = (min_lr / base_lr) if min_lr is not None else min_lr_ratio
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"scheduler.min_lr ({min_lr}) must lie between 0 and optimizer.lr ({base_lr})")
    return floor


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 100,
                  min_lr: float | None = None, min_lr_ratio: float = 0.1) -> LambdaLR:
    """Linear warmup then cosine decay to ``min_lr`` (absolute) or ``min_lr_ratio`` * lr."""
    return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, _floor(optimizer, min_lr, min_lr_ratio)))


def warmup_linear(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 100,
                  min_lr: float | None = None, min_lr_ratio: float = 0.0) -> LambdaLR:
    """Linear warmup then linear decay to ``min_lr`` (absolute) or ``min_lr_ratio`` * lr."""
    return LambdaLR(optimizer, WarmupLinear(warmup_steps, total_steps, _floor(optimizer, min_lr, min_lr_ratio)))


def wsd(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 50, decay_fraction: float = 0.2,
        shape: str = "linear", min_lr: float | None = None, min_lr_ratio: float = 0.0) -> LambdaLR:
    """Warmup, a constant stage, then decay over the last ``decay_fraction`` of the steps."""
    return LambdaLR(optimizer, WarmupStableDecay(warmup_steps, total_steps, _floor(optimizer, min_lr, min_lr_ratio),
                                                 decay_fraction, shape))


def check_scheduler(sched_cfg: Mapping[str, Any] | None) -> None:
    """Validate schedule values before any expensive work (raises ValueError)."""
    if sched_cfg and str(sched_cfg.get("_target_", "")).endswith(".wsd"):
        WarmupStableDecay.check(sched_cfg.get("decay_fraction", 0.2), sched_cfg.get("shape", "linear"))


def constant(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0) -> LambdaLR:
    """Constant learning rate after an optional linear warmup."""
    return LambdaLR(optimizer, WarmupConstant(warmup_steps, total_steps, 1.0))


def plateau(optimizer: torch.optim.Optimizer, total_steps: int, monitor: str, mode: str = "min",
            factor: float = 0.5, patience: int = 2, threshold: float = 1e-4,
            min_lr: float = 0.0) -> ReduceLROnPlateau:
    """Reduce the lr by ``factor`` after ``patience`` validations without improvement of ``monitor``.

    ``total_steps`` is accepted for a uniform factory signature and ignored.
    """
    if not monitor:
        raise ValueError("scheduler=plateau needs scheduler.monitor (a logged metric such as val/loss)")
    sched = ReduceLROnPlateau(optimizer, mode=mode, factor=factor, patience=patience,
                              threshold=threshold, min_lr=min_lr)
    sched.monitor = monitor  # read by lightning_scheduler() to fill Lightning's config
    return sched


def lightning_scheduler(scheduler: Any, trainer: Any) -> dict[str, Any]:
    """The lr_scheduler entry Lightning wants: per step, or after each validation for plateau."""
    if not isinstance(scheduler, ReduceLROnPlateau):
        return {"scheduler": scheduler, "interval": "step"}
    val_every = getattr(trainer, "val_check_interval", None) if trainer is not None else None
    by_steps = trainer is not None and getattr(trainer, "check_val_every_n_epoch", 1) is None
    if by_steps and isinstance(val_every, int):
        # Validation runs every `val_every` micro-batches: step right after it, when the metric is fresh.
        return {"scheduler": scheduler, "monitor": scheduler.monitor, "interval": "step",
                "frequency": val_every, "strict": True}
    every = getattr(trainer, "check_val_every_n_epoch", 1) or 1
    return {"scheduler": scheduler, "monitor": scheduler.monitor, "interval": "epoch",
            "frequency": int(every), "strict": True}


def refit_schedule(trainer: Any, total_steps: int) -> str | None:
    """After a resume: when the run's horizon (``trainer.max_steps``, or the steps of
    ``max_epochs``) differs from the one the restored schedule was sized for, re-fit it to end
    there, carrying on from the current step (:meth:`WarmupCosine.refit_to`). The same horizon
    changes nothing, so such a resume stays bitwise exact. A schedule resized by fit_to_time is
    left alone. Returns the line to print, or None."""
    for config in getattr(trainer, "lr_scheduler_configs", []):
        sched = config.scheduler
        fns = {id(fn): fn for fn in getattr(sched, "lr_lambdas", []) if isinstance(fn, WarmupCosine)}
        for fn in fns.values():
            if getattr(fn, "fitted", False):
                continue
            old, step = fn.total_steps, int(sched.last_epoch)
            value = fn.refit_to(step, total_steps)
            if value is None:
                continue
            try:
                lr = f"{_base_lr(sched.optimizer) * value:.3g}"
            except (AttributeError, KeyError, IndexError):
                lr = f"x{value:.3g}"
            return (f"lr schedule: the run now ends at step {total_steps} (was {old}); re-fitted from step "
                    f"{step} (lr {lr}) to reach its end there")
    return None
