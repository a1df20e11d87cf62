"""What a run needs to know about being one of many processes.

Lightning does the launching and the communication; this module only answers questions that
must be answered before (or beside) the Trainer: is this process global rank 0, will the
Trainer start more copies of this very command, do all ranks agree on one run directory, and
how big is one optimizer step's batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig

# Any of these set to a non-zero value means "not global rank 0", whoever launched us:
# torchrun (RANK, GROUP_RANK), Lightning's own launcher (LOCAL_RANK, NODE_RANK), SLURM's srun
# (SLURM_PROCID), Open MPI / MPICH (OMPI_COMM_WORLD_RANK, PMI_RANK), LSF (JSM_NAMESPACE_RANK).
RANK_ENV_VARS = ("RANK", "GROUP_RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID",
                 "OMPI_COMM_WORLD_RANK", "PMI_RANK", "JSM_NAMESPACE_RANK")

MULTIRUN_DDP_MESSAGE = (
    "-m/--multirun cannot be combined with in-process DDP launching (Lightning would re-run the "
    "whole sweep in every extra rank); use trainer.strategy=ddp_spawn, or launch each job with "
    "torchrun/srun (docs/scaling.md)"
)


def env_is_global_zero(env: Mapping[str, str] | None = None) -> bool:
    """True unless the environment names this process as some rank other than 0.

    Valid before the Trainer exists (Hydra's job start, the .hydra/ write); afterwards
    ``trainer.is_global_zero`` is the authority and agrees with this for the launchers above.
    """
    env = os.environ if env is None else env
    for key in RANK_ENV_VARS:
        value = env.get(key, "").strip()
        if value and value.lstrip("-").isdigit() and int(value) != 0:
            return False
    return True


def external_world_size(env: Mapping[str, str] | None = None) -> int:
    """Processes started by an outside launcher (torchrun, srun), each with its own Python.

    Lightning's own children (LOCAL_RANK without RANK) do not count: Lightning passes them the
    parent's run directory on the command line.
    """
    env = os.environ if env is None else env
    if {"RANK", "LOCAL_RANK", "WORLD_SIZE"} <= env.keys():  # torchrun / torch elastic
        return int(env["WORLD_SIZE"])
    job_name = env.get("SLURM_JOB_NAME", "")
    if "SLURM_NTASKS" in env and job_name not in ("bash", "interactive"):  # srun, as Lightning reads it
        return int(env["SLURM_NTASKS"])
    if "OMPI_COMM_WORLD_SIZE" in env:
        return int(env["OMPI_COMM_WORLD_SIZE"])
    return 1


def shared_run_dir_problem(cfg: DictConfig, env: Mapping[str, str] | None = None) -> str | None:
    """Why the ranks of this run would not share one run directory, or None.

    Without ``run_name`` the directory name is a timestamp taken in each process; processes
    started separately (other nodes, torchrun, srun) would each make their own.
    """
    if cfg.get("run_name") is not None:
        return None
    nodes = int(cfg.trainer.get("num_nodes", 1) or 1)
    world = external_world_size(env)
    if nodes > 1 or world > 1:
        who = f"trainer.num_nodes={nodes}" if nodes > 1 else f"{world} separately launched processes"
        return (f"{who}: set run_name=NAME so that every rank writes to the same outputs/NAME/ "
                "(and a requeued job resumes there)")
    return None


def effective_batch_size(micro_batch: int, accumulate: int, world_size: int) -> int:
    """Samples per optimizer step: micro-batch x gradient accumulation x data-parallel ranks."""
    return int(micro_batch) * int(accumulate) * int(world_size)


def build_bare_trainer(trainer_cfg: DictConfig, precision: str):
    """The Trainer the config asks for, without callbacks or loggers (nothing is launched)."""
    from hydra.utils import instantiate

    quiet = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # "GPU available: ..." belongs to the real run
    try:
        return instantiate(trainer_cfg, callbacks=[], logger=False, enable_checkpointing=False,
                           enable_progress_bar=False, enable_model_summary=False, precision=precision)
    finally:
        quiet.setLevel(level)


def launches_in_process(trainer: Any) -> bool:
    """Will ``trainer.fit`` start extra copies of this command (Lightning's subprocess launcher)?

    True for ddp/fsdp with devices > 1 started as a plain ``python train.py``; False for
    ddp_spawn (children run a function, not the script), single-device runs, and runs whose
    processes were created by torchrun/SLURM.
    """
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    launcher = getattr(trainer.strategy, "launcher", None)
    if not isinstance(launcher, _SubprocessScriptLauncher):
        return False
    env = trainer.strategy.cluster_environment
    return not env.creates_processes_externally and launcher.num_processes > 1


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The override list of every job a basic-sweeper multirun would run."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides=overrides)
    batches = BasicSweeper.split_arguments(parsed, None)
    return [list(job) for batch in batches for job in batch]


FSDP_TARGETS = ("FSDPStrategy", "ModelParallelStrategy", "FSDP2Strategy")


def is_fsdp(strategy: Any) -> bool:
    """Does this strategy shard parameters (FSDP1, or FSDP2 through ModelParallelStrategy)?

    ``strategy``: a Strategy object, a config with ``_target_``, or a registry name ("fsdp").
    """
    if strategy is None:
        return False
    if hasattr(strategy, "get") and not isinstance(strategy, str):
        strategy = strategy.get("_target_", "")
    if isinstance(strategy, str):
        return strategy.lower().startswith("fsdp") or strategy.rsplit(".", 1)[-1] in FSDP_TARGETS
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    return isinstance(strategy, FSDPStrategy | ModelParallelStrategy)


def is_fsdp1(strategy: Any) -> bool:
    """FSDP1 (``FSDPStrategy``, Lightning's "fsdp..." names): flat 1-D parameter shards, which
    optimizers that need whole matrices (Muon) cannot use. FSDP2 shards are 2-D DTensors."""
    if hasattr(strategy, "get") and not isinstance(strategy, str):
        strategy = strategy.get("_target_", "")
    if isinstance(strategy, str):
        name = strategy.rsplit(".", 1)[-1]
        return name == "FSDPStrategy" or (name.lower().startswith("fsdp") and "strategy" not in name.lower())
    from lightning.pytorch.strategies import FSDPStrategy

    return isinstance(strategy, FSDPStrategy)
