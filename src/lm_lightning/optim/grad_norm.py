"""The total gradient norm, as one device tensor: plain tensors, or FSDP2's sharded DTensors."""

from __future__ import annotations

import torch


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
    if type(first).__name__ != "DTensor":  # no torch.distributed import on the hot path
        return None
    from torch.distributed.tensor import Shard

    if first.device_mesh.ndim != 1 or not all(isinstance(pl, Shard) for t in tensors for pl in t.placements):
        raise NotImplementedError("gradient norms of DTensors other than 1-D sharded ones")
    return first.device_mesh
