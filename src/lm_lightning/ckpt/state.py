"""Parameter names in a checkpoint: wrapper prefixes, the tied output layer, what is not a weight.

These rules are written here once; every reader and writer of model weights uses them.
"""

from __future__ import annotations

from typing import Any

# Prefixes that wrappers add to parameter names: the LightningModule attribute, torch.compile,
# DDP. Stripped in this order so that any combination loads into a bare GPT.
PREFIXES = ("model.", "_orig_mod.", "module.")
# A tied output layer is the token embedding under a second name: stored once, as ``wte.weight``.
TIED_HEAD = "lm_head.weight"
# Task heads saved beside the transformer (``LMModule.regression_head``).
HEADS = ("regression_head.",)


def strip_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in state.items():
        k = key
        changed = True
        while changed:
            changed = False
            for prefix in PREFIXES:
                if k.startswith(prefix):
                    k = k[len(prefix):]
                    changed = True
        out[k] = value
    return out


def drop_tied_head(state: dict[str, Any], tie_weights: bool) -> dict[str, Any]:
    """``state`` without ``lm_head.weight`` when the head is tied."""
    return {k: v for k, v in state.items() if not (tie_weights and k == TIED_HEAD)}


def missing_but_tied(missing: list[str], tie_weights: bool) -> list[str]:
    """``load_state_dict``'s missing keys, less a tied head (it appears under ``wte`` only)."""
    return [k for k in missing if not (tie_weights and k == TIED_HEAD)]


def metric_prefixes(module: Any) -> tuple[str, ...]:
    """State-dict prefixes of a module's metric states (torchmetrics objects): not weights."""
    from torchmetrics import Metric

    return tuple(f"{name}." for name, m in module.named_modules() if name and isinstance(m, Metric))


def weights(state: dict[str, Any], tie_weights: bool, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """The bare GPT's (and heads') tensors on the CPU: no ``drop`` prefixes, wrapper prefixes
    stripped, a tied head stored once; contiguous, as safetensors needs."""
    kept = strip_prefixes({k: v for k, v in state.items() if not k.startswith(drop)}) if drop else strip_prefixes(state)
    return {k: v.detach().to("cpu").contiguous() for k, v in drop_tied_head(kept, tie_weights).items()}
