"""The one place where parallelism is applied to the model: FSDP2 (``fully_shard``) on a mesh.

``trainer=fsdp`` / ``trainer=fsdp_cpu`` use :class:`FSDP2Strategy`, Lightning's
``ModelParallelStrategy`` with the data-parallel size filled in from the world size. Lightning
then calls ``LMModule.configure_model``, which calls :func:`parallelize` here. ``model.py``
stays a plain ``nn.Module``: nothing in it knows about meshes or shards.

Order per transformer block, as torchtitan does it: (tensor parallel), activation
checkpointing, compile, ``fully_shard``; then the root (embeddings, final norm, output head)
and the task heads. Each block is one FSDP unit: its parameters are all-gathered just before
it runs and freed after (``reshard_after_forward``), so one process holds one block's full
weights at a time plus its 1/N shard of everything.

Mixed precision: on GPUs with a bf16 trainer precision, ``MixedPrecisionPolicy`` computes in
bf16 (the all-gathered copies) and reduces gradients in fp32; the sharded master weights and
the optimizer state stay fp32. On the CPU everything is fp32 (gloo, and exact parity tests).

Tensor parallel is refused (one line) when the mesh's ``tensor_parallel`` dimension is larger
than 1: ``c_attn`` is one fused q|k|v matrix, so a column-wise split would give each rank
slices across q, k and v instead of whole heads, and the attention reshapes by the config's
head count. Building it needs separate q/k/v projections (a model change) first.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from lm_lightning.errors import UserError

log = logging.getLogger("lm_lightning")

TP_REFUSAL = ("tensor parallel (tensor_parallel_size > 1) is not supported: attention's c_attn is one fused "
              "q|k|v matrix, which a column split would cut across q, k and v; use tensor_parallel_size=1")


class FSDP2Strategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` whose data-parallel size defaults to every process.

    Lightning's own ``"auto"`` makes the data-parallel size the number of nodes and tensor
    parallel the GPUs of a node; here ``tensor_parallel_size`` defaults to 1 and
    ``data_parallel_size="auto"`` to world size / tensor parallel size, i.e. pure FSDP.
    """

    def __init__(self, data_parallel_size: int | str = "auto", tensor_parallel_size: int | str = 1,
                 reshard_after_forward: bool = True, **kwargs: Any) -> None:
        super().__init__(data_parallel_size=data_parallel_size, tensor_parallel_size=tensor_parallel_size, **kwargs)
        self.reshard_after_forward = bool(reshard_after_forward)

    def setup_environment(self) -> None:
        world = self.num_nodes * self.num_processes
        if self._tensor_parallel_size == "auto":
            self._tensor_parallel_size = 1
        tp = int(self._tensor_parallel_size)
        if self._data_parallel_size == "auto":
            if world % tp:
                raise UserError(f"tensor_parallel_size={tp} does not divide the {world} processes")
            self._data_parallel_size = world // tp
        super().setup_environment()


def reshards_after_forward(strategy: Any) -> bool:
    """FSDP2Strategy's ``reshard_after_forward`` option; Lightning's own ModelParallelStrategy: True."""
    return strategy.reshard_after_forward if isinstance(strategy, FSDP2Strategy) else True


def is_parallelized(module: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def mixed_precision(precision: str, device: torch.device):
    """bf16 compute / fp32 gradient reduction on GPUs under a bf16 precision; None (fp32) otherwise."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if device.type == "cpu" or "bf16" not in str(precision):
        return None
    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


def parallelize(model: torch.nn.Module, mesh: Any, *, heads: list[torch.nn.Module] = (),
                precision: str = "32-true", compile_kwargs: dict[str, Any] | None = None,
                reshard_after_forward: bool = True) -> torch.nn.Module:
    """Apply activation checkpointing, compile and FSDP2 to ``model`` (a GPT) in place.

    ``mesh``: the strategy's device mesh (dims ``data_parallel``, ``tensor_parallel``).
    ``heads``: task heads outside the GPT (each becomes its own FSDP unit, so its gradients are
    reduced too). ``compile_kwargs``: ``torch.compile`` arguments, or None for eager.
    """
    from torch.distributed._composable import checkpoint as composable_checkpoint
    from torch.distributed.fsdp import fully_shard

    if is_parallelized(model):
        return model  # configure_model runs again for validate/test after fit
    names = mesh.mesh_dim_names or ()
    if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
        raise UserError(TP_REFUSAL)
    dp_mesh = mesh["data_parallel"] if "data_parallel" in names else mesh
    device = torch.device(dp_mesh.device_type)
    mp = mixed_precision(precision, device)
    shard_kwargs: dict[str, Any] = {"mesh": dp_mesh}
    if mp is not None:
        shard_kwargs["mp_policy"] = mp
    use_ac = bool(getattr(model.config, "activation_checkpointing", False))
    if use_ac:
        # The model's own per-block checkpoint() call is switched off for this instance: the
        # checkpoint is applied to each block here, inside its FSDP unit (torchtitan's order).
        model.config = dataclasses.replace(model.config, activation_checkpointing=False)
    last = len(model.h) - 1
    for i, block in enumerate(model.h):
        if use_ac:
            composable_checkpoint(block)
        if compile_kwargs is not None:
            block.compile(**compile_kwargs)  # in place: parameter names do not change
        # The last block's parameters would be gathered again at once by backward: keep them.
        fully_shard(block, reshard_after_forward=reshard_after_forward and i < last, **shard_kwargs)
    for head in heads:
        fully_shard(head, **shard_kwargs)
    root_kwargs = dict(shard_kwargs)
    if mp is not None:
        from torch.distributed.fsdp import MixedPrecisionPolicy

        # Logits leave the root in fp32: the losses and metrics see the same dtype as without FSDP.
        root_kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                                        output_dtype=torch.float32)
    fully_shard(model, reshard_after_forward=reshard_after_forward, **root_kwargs)
    return model


def local_numel(tensors) -> int:
    """Elements this process holds: a DTensor's local shard, a plain tensor whole."""
    from torch.distributed.tensor import DTensor

    return sum((t.to_local() if isinstance(t, DTensor) else t).numel() for t in tensors)


def optimizer_state_numel(optimizer: torch.optim.Optimizer) -> int:
    """Elements of this process's optimizer state tensors (step counters excluded)."""
    tensors = [v for state in optimizer.state.values() for k, v in state.items()
               if torch.is_tensor(v) and k != "step"]
    return local_numel(tensors)
