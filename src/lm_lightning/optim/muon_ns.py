"""torch's Muon step with a per-device Newton-Schulz precision and a momentum warmup.

``torch.optim.Muon`` always orthogonalises in bfloat16 (``_zeropower_via_newtonschulz`` casts
the update with ``.bfloat16()``). That is what GPUs want; on a CPU without AMX bf16 matrix
products are slower than fp32 ones. :class:`Muon` is torch's class with its step rewritten
around the same pieces:

- ``ns_dtype``: ``bfloat16`` calls torch's own Newton-Schulz (the result is torch's, bitwise);
  ``float32`` runs the same iteration in fp32 (:func:`zeropower`); ``auto`` (the default) picks
  per parameter device: fp32 on a CPU, bf16 on CUDA and anything else (the GPU behaviour is
  unchanged).
- ``momentum_warmup_steps`` / ``momentum_start``: the momentum rises linearly from
  ``momentum_start`` to the group's target ``momentum`` over that many optimizer steps
  (modded-nanogpt warms Muon's momentum from 0.85 to 0.95). 0 = off. The step counter lives in
  the group dict (``muon_step``), so ``state_dict`` carries it and a resume continues exactly.

Everything else (momentum buffer, Nesterov, decoupled weight decay, the per-shape lr factor)
follows ``torch.optim._muon._single_tensor_muon``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim._muon import _adjust_lr, _zeropower_via_newtonschulz

NS_DTYPES = ("auto", "float32", "bfloat16")


def resolve_ns_dtype(ns_dtype: str | None, device: torch.device) -> torch.dtype:
    """The Newton-Schulz dtype for a parameter on ``device``: auto = fp32 on a CPU, else bf16."""
    if ns_dtype in (None, "auto"):
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if ns_dtype not in NS_DTYPES:
        raise ValueError(f"optimizer.muon_ns_dtype must be one of {', '.join(NS_DTYPES)}, got {ns_dtype!r}")
    return getattr(torch, ns_dtype)


def check_options(ns_dtype: str | None, momentum_warmup_steps: Any, momentum_start: Any) -> None:
    """The options this class adds to torch's Muon, each with the config key it comes from
    (raises ValueError, one line); ``muon.check`` validates the config with it too."""
    resolve_ns_dtype(ns_dtype, torch.device("cpu"))  # validates the name
    if int(momentum_warmup_steps or 0) < 0:
        raise ValueError(f"optimizer.muon_momentum_warmup_steps must be >= 0, got {momentum_warmup_steps}")
    if not 0.0 <= float(momentum_start) < 1.0:
        raise ValueError(f"optimizer.muon_momentum_start must be in [0, 1), got {momentum_start}")


def zeropower(grad: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Approximate orthogonalisation of a 2-D ``grad`` by ``steps`` quintic Newton-Schulz iterations.

    The iteration torch's Muon runs (X <- aX + (bA + cA^2)X with A = XX^T, on the wide
    orientation, after scaling to unit Frobenius norm), in ``dtype``. Returns ``dtype``.
    """
    a, b, c = coefficients
    x = grad.to(dtype, copy=True)
    tall = grad.size(0) > grad.size(1)
    if tall:
        x = x.T
    x.div_(x.norm().clamp(min=eps))
    for _ in range(steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, poly, x, beta=a)
    return x.T if tall else x


def run_closure(closure: Callable[[], Any] | None) -> Any:
    """An optimizer step's prelude: run the closure (forward, backward) with gradients on; its loss."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def momentum_at(step: int, target: float, warmup_steps: int, start: float) -> float:
    """Momentum for 0-based optimizer step ``step``: linear from ``start`` to ``target`` over the warmup."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return target
    frac = step / warmup_steps
    return (1.0 - frac) * start + frac * target


class Muon(torch.optim.Muon):
    """``torch.optim.Muon`` with ``ns_dtype`` and a momentum warmup (see the module docstring)."""

    def __init__(self, params: Any, *args: Any, ns_dtype: str = "auto", momentum_warmup_steps: int = 0,
                 momentum_start: float = 0.85, **kwargs: Any) -> None:
        check_options(ns_dtype, momentum_warmup_steps, momentum_start)
        super().__init__(params, *args, **kwargs)
        for g in self.param_groups:
            g.setdefault("ns_dtype", ns_dtype)
            g.setdefault("momentum_warmup_steps", int(momentum_warmup_steps))
            g.setdefault("momentum_start", float(momentum_start))
            g.setdefault("muon_step", 0)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            # Groups from a checkpoint written before these keys existed: today's behaviour.
            t = int(group.get("muon_step", 0))
            momentum = momentum_at(t, float(group["momentum"]), int(group.get("momentum_warmup_steps", 0)),
                                   float(group.get("momentum_start", 0.85)))
            lr = float(group["lr"])
            wd = float(group["weight_decay"])
            coefficients, steps, eps = group["ns_coefficients"], group["ns_steps"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                dtype = resolve_ns_dtype(group.get("ns_dtype", "auto"), p.device)
                if dtype == torch.bfloat16:
                    update = _zeropower_via_newtonschulz(update, coefficients, steps, eps)  # torch's own
                else:
                    update = zeropower(update, coefficients, steps, eps, dtype)
                p.mul_(1 - lr * wd)
                p.add_(update, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], p.shape))
            group["muon_step"] = t + 1
        return loss
