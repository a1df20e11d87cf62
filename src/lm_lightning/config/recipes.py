"""Recipes fix the what, hardware presets the how: the arithmetic behind the config resolvers.

An experiment states its recipe's ``effective_batch_size`` (sequences per optimizer step). A
hardware preset (``trainer=cpu|gtx1660|rtx3060|a100|h100``) states what one micro-batch of its
machine holds, ``hardware.micro_batch_tokens``. The micro-batch is then the largest divisor of
the effective batch that fits that many tokens at the run's ``data.block_size``, and gradient
accumulation makes up the rest, so every machine trains the same recipe::

    data.batch_size:                  ${lm.micro_batch:EFFECTIVE,BLOCK,TOKENS_OR_NULL,RECIPE_MICRO}
    trainer.accumulate_grad_batches:  ${lm.accumulation:EFFECTIVE,${data.batch_size}}

Anything given on the command line (``data.batch_size=8``, ``trainer.accumulate_grad_batches=2``,
``effective_batch_size=128``) replaces the interpolation and so wins. Pure Python: these run
inside config resolution, before anything heavy is imported.
"""

from __future__ import annotations

import os
from typing import Any


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


def micro_batch(effective: Any, block_size: Any, micro_batch_tokens: Any = None, recipe_micro: Any = None) -> int:
    """Sequences per micro-batch.

    Without a hardware preset (``micro_batch_tokens`` null) the recipe's own micro-batch
    (``recipe_micro``, default: the whole effective batch). With one, the largest divisor of
    ``effective`` whose ``block_size``-token sequences fit ``micro_batch_tokens``; at least 1.
    """
    effective = _positive_int(effective, "effective_batch_size")
    if micro_batch_tokens is None:
        micro = effective if recipe_micro is None else _positive_int(recipe_micro, "the recipe's micro-batch")
        if effective % micro:
            raise ValueError(f"the recipe's micro-batch {micro} does not divide effective_batch_size={effective}")
        return micro
    tokens = _positive_int(micro_batch_tokens, "hardware.micro_batch_tokens")
    block = _positive_int(block_size, "data.block_size")
    fits = max(1, tokens // block)
    return max(d for d in range(1, min(fits, effective) + 1) if effective % d == 0)


def accumulation(effective: Any, micro: Any) -> int:
    """Micro-batches per optimizer step so that micro x accumulation = the effective batch."""
    effective = _positive_int(effective, "effective_batch_size")
    micro = _positive_int(micro, "data.batch_size")
    if effective % micro:
        raise ValueError(
            f"data.batch_size={micro} does not divide effective_batch_size={effective}; pick a divisor, "
            f"or also set trainer.accumulate_grad_batches (or effective_batch_size)"
        )
    return effective // micro


def times(a: Any, b: Any) -> int:
    """``${lm.times:500,${trainer.accumulate_grad_batches}}``: optimizer steps in micro-batches
    (Lightning's integer ``val_check_interval`` counts micro-batches)."""
    return int(a) * int(b)


def workers(requested: Any) -> int:
    """Data-loader processes: as requested, but never more than this machine's CPU cores."""
    return max(0, min(int(requested), os.cpu_count() or 1))


RESOLVERS = {
    "lm.micro_batch": micro_batch,
    "lm.accumulation": accumulation,
    "lm.times": times,
    "lm.workers": workers,
}
