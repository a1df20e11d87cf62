"""Parameter groups: weight decay on matrices only, layer-wise lr decay and freezing.

Every rule is chosen by module type and by the path parts of a parameter's name (``h.<i>.``),
never by tensor shape, so it holds under FSDP, whose optimizer sees flattened 1-D shards.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from lm_lightning.model import BLOCK_PARAM

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


def n_layers(model: torch.nn.Module) -> int:
    """The number of transformer blocks, counted from the parameter names."""
    ids = [int(m.group(1)) for n, _ in model.named_parameters() if (m := BLOCK_PARAM.search(n))]
    return max(ids) + 1 if ids else 0


def matrix_weights(model: torch.nn.Module) -> set[int]:
    """ids of the Linear and Embedding weights: the tensors that get weight decay."""
    return {id(m.weight) for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))}


def check_freeze_layers(layers: Any, n_layer: int) -> None:
    """``optimizer.freeze_layers``: 0 (none) up to every block of the model."""
    if not 0 <= int(layers or 0) <= n_layer:
        raise ValueError(f"optimizer.freeze_layers must be in [0, {n_layer}] (model.n_layer), got {layers}")


def check_layer_decay(layer_decay: Any) -> None:
    """``optimizer.layer_decay``: null (off) or a factor in (0, 1]."""
    if layer_decay is not None and not 0.0 < float(layer_decay) <= 1.0:
        raise ValueError(f"optimizer.layer_decay must be in (0, 1], got {layer_decay}")


def freeze(model: torch.nn.Module, embeddings: bool = False, layers: int = 0) -> int:
    """Discriminative fine-tuning: stop gradients to the embeddings and blocks ``0..layers-1``.

    With tied weights the output head shares the token embedding, so freezing embeddings freezes
    it too. Returns the number of frozen tensors.
    """
    n_layer = n_layers(model)
    check_freeze_layers(layers, n_layer)
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
    matrices = matrix_weights(model)
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
    check_layer_decay(layer_decay)
    if lr is None:
        raise ValueError("layer_decay needs the base learning rate")
    n_layer = n_layers(model)
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
