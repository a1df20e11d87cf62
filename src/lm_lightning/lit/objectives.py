"""Named training objectives and the weighted multi-task loss.

A batch is a dict. Every task provides ``input_ids`` (B, T) and ``labels`` (B, T) with
-100 where no prediction is wanted; the Collatz task adds ``padding_mask`` (B, T, True at
real tokens), ``lengths`` (B,) and ``stopping_time`` (B,). Each objective reads what it needs
from the batch and the model outputs and returns a scalar loss.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100

Objective = Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]], torch.Tensor]


def next_token_loss(outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of next-token logits (B, T, V) against labels (B, T), ignoring -100."""
    logits = outputs["logits"]
    # No explicit .float(): under autocast cross_entropy already computes in fp32, and an fp32
    # copy of (B, T, V) logits would cost gigabytes at GPT-2's vocabulary.
    return F.cross_entropy(logits.view(-1, logits.size(-1)), batch["labels"].view(-1), ignore_index=IGNORE_INDEX)


def stopping_time_loss(outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Huber loss in log space: the regression head predicts log1p(stopping time)."""
    target = torch.log1p(batch["stopping_time"].float())
    return F.huber_loss(outputs["stopping_time"].float(), target)


OBJECTIVES: dict[str, Objective] = {
    "next_token": next_token_loss,
    "stopping_time": stopping_time_loss,
}

# Extra heads an objective needs on top of the language-model head.
HEADS: dict[str, str] = {"stopping_time": "regression"}


def check_weights(weights: Mapping[str, float], task_objectives: list[str]) -> dict[str, float]:
    """Weights for the objectives this task trains; unknown names are a user error (ValueError)."""
    unknown = sorted(set(weights) - set(OBJECTIVES))
    if unknown:
        raise ValueError(f"unknown loss objective(s) {unknown}; known: {sorted(OBJECTIVES)}")
    out = {}
    for name in task_objectives:
        w = float(weights.get(name, 1.0))
        if w < 0:
            raise ValueError(f"loss.weights.{name} must be >= 0, got {w}")
        out[name] = w
    return out


def z_loss(outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean of logsumexp(logits)^2 over the scored tokens (PaLM's z-loss).

    Pulls the softmax normaliser towards 1 (log Z towards 0), which keeps logits from drifting
    under bf16; the cross-entropy itself is unchanged by it.
    """
    logits = outputs["logits"]
    lse = torch.logsumexp(logits.float(), dim=-1)  # (B, T)
    keep = (batch["labels"] != IGNORE_INDEX).to(lse.dtype)
    return (lse.square() * keep).sum() / keep.sum().clamp(min=1)


def multi_task_loss(
    outputs: Mapping[str, torch.Tensor],
    batch: Mapping[str, torch.Tensor],
    weights: Mapping[str, float],
    z_loss_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total = sum of weight * objective (+ z_loss_weight * z-loss); also returns each part.

    The z-loss is an auxiliary term, reported as ``z_loss``; ``next_token`` stays the pure
    cross-entropy, so perplexity means what it says.
    """
    parts = {name: OBJECTIVES[name](outputs, batch) for name in weights}
    total = sum(weights[name] * value for name, value in parts.items())
    if z_loss_weight and "labels" in batch:
        parts["z_loss"] = z_loss(outputs, batch)
        total = total + z_loss_weight * parts["z_loss"]
    return total, parts
