"""The run session: one training run from a composed config, top to bottom.

:func:`train` holds the run lock and goes through the steps in order:

1. **prepare** (:mod:`lm_lightning.run.plan`): the checked config, the data module, the model
   shape and the resume plan; reused from the command line's precheck when it prepared this
   config, else made here, once;
2. **before the run directory is written to**: data preparation (downloads, tokenizing) and
   ``model.init_from`` weights, which can fail on user input (exit 2, nothing written);
3. **build**: seed, module, callbacks, loggers, trainer (:func:`build`);
4. **fit** (and **test**), then **finish**: ``summary.json``, the runs index, the final table.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf, open_dict

from lm_lightning.errors import UserError, user_errors
from lm_lightning.known_warnings import silence_known_warnings
from lm_lightning.run import rundir
from lm_lightning.run.plan import Prepared, fingerprint, plan_resume, prepare

if TYPE_CHECKING:  # the data contract (imports Lightning)
    from lm_lightning.data.base import LMDataModule
    from lm_lightning.run.resume import ResumePlan

log = logging.getLogger("lm_lightning")


def train(cfg: DictConfig, prepared: Prepared | None = None) -> dict[str, Any]:
    """Train one run from a composed config; returns the summary (also written to summary.json).

    ``prepared``: the command line's :class:`Prepared`, used when it was prepared from this config.
    Holds the run directory's lock throughout (global rank 0; :mod:`lm_lightning.run.runlock`): a
    second start of a run that a live process is training is refused at once, exit 2."""
    from lm_lightning.run.runlock import run_lock

    with run_lock(rundir.output_dir(cfg)):
        return _train(cfg, prepared)


def prepare_for(cfg: DictConfig, prepared: Prepared | None) -> Prepared:
    """The command line's :class:`Prepared` if it is this config's, else one made here (once)."""
    if prepared is None or prepared.key != fingerprint(cfg):
        return prepare(cfg)
    from lm_lightning.config.resolve import resolve

    resolve(cfg)  # what the task saves and prints is resolved, as prepare() leaves it
    prepared.show_shape(cfg)
    return prepared


def _train(cfg: DictConfig, prepared: Prepared | None) -> dict[str, Any]:
    silence_known_warnings()  # again: callers (notebooks, pytest's recwarn) may have reset the filters
    from lm_lightning.run.distributed import MULTIRUN_DDP_MESSAGE, build_bare_trainer, launches_in_process
    from lm_lightning.run.resume import apply_overwrite, for_run

    run_dir = rundir.output_dir(cfg)
    with open_dict(cfg):
        # Pin the job directory before anything resolves ${paths.output_dir} (multirun jobs:
        # each job's checkpoints, logs and auto-resume stay in its own directory).
        cfg.paths.output_dir = str(run_dir)
    prepared = prepare_for(cfg, prepared)
    if is_multirun() and launches_in_process(build_bare_trainer(cfg.trainer, prepared.precision)):
        # Backstop for sweepers main() cannot expand (e.g. Optuna); main() refuses the rest.
        raise UserError(MULTIRUN_DDP_MESSAGE)
    if prepared.resume is None or prepared.run_dir != run_dir:  # the precheck's plan is for this directory
        plan_resume(cfg, run_dir, prepared)
    resume_plan = for_run(prepared.resume, cfg)
    apply_overwrite(cfg, run_dir)
    # Data preparation (tokenizing, downloads) and initial weights can fail on user input:
    # both happen before the run directory is written to.
    prepare_early(prepared.datamodule)
    init_state = init_weights(cfg, prepared.model_cfg, prepared.init_kind)
    run_dir.mkdir(parents=True, exist_ok=True)
    return fit_and_finish(cfg, run_dir, prepared, resume_plan, init_state)


def fit_and_finish(cfg: DictConfig, run_dir: Path, prepared: Prepared, resume_plan: ResumePlan,
                   init_state: dict[str, Any] | None) -> dict[str, Any]:
    from lm_lightning.run import index
    from lm_lightning.run.distributed import env_is_global_zero
    from lm_lightning.run.summary import has_best, write_summary

    handler = None
    if env_is_global_zero():  # every rank runs this in the same run directory; one writer per file
        rundir.save_run_config(cfg, run_dir)
        handler = rundir.attach_file_log(run_dir)
        rundir.print_config(cfg)
    module, trainer = build(cfg, prepared, init_state)
    datamodule = prepared.datamodule
    batch = log_effective_batch(trainer, datamodule)
    if trainer.is_global_zero:
        log.info("run directory: %s", run_dir)
        log.info("model: %s parameters", f"{module.model.num_params():,}")

    run_id = index.record_start(cfg, run_dir) if trainer.is_global_zero else None
    start = time.time()
    status, outcome = "failed", None
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=announce_resume(trainer, resume_plan),
                    weights_only=True)
        outcome = rundir.run_outcome(trainer)
        status = outcome[0]
        if cfg.get("test") and status == "finished":
            trainer.test(module, datamodule=datamodule, ckpt_path="best" if has_best(trainer) else None)
    finally:
        extra = {"stop_reason": outcome[1], "exit_code": outcome[2]} if outcome else {}
        summary = write_summary(trainer, run_dir, status, time.time() - start, {**batch, **extra})
        if run_id is not None:
            index.record_end(cfg, run_id, run_dir, summary, error=sys.exc_info()[1])
        rundir.detach_file_log(handler)
    if status == "finished" and trainer.is_global_zero:
        print_final_table(summary, datamodule)
    return summary


def build(cfg: DictConfig, prepared: Prepared, init_state: dict[str, Any] | None) -> tuple[Any, Any]:
    """Seed, module (initial weights, compile), callbacks, loggers and the trainer, in that order."""
    import lightning.pytorch as pl
    from hydra.utils import instantiate

    from lm_lightning.callbacks.model_summary import summary_callbacks
    from lm_lightning.config.resolve import compile_mode
    from lm_lightning.lit.module import LMModule

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    enable_tf32()
    objectives = prepared.datamodule.objectives
    max_steps = int(cfg.trainer.get("max_steps", -1))
    module = LMModule(
        model=prepared.model_cfg,
        loss_weights={k: v for k, v in cfg.loss.weights.items() if k in objectives},
        optimizer=instantiate(cfg.optimizer),
        scheduler=scheduler_factory(cfg),
        total_steps=max(0, max_steps),
        z_loss=float(cfg.loss.get("z_loss") or 0.0),
    )
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    if init_state is not None:
        module.model.load_state_dict(init_state, strict=False)
    mode = compile_mode(cfg.model.get("compile"))
    if mode:
        # Compiles the forward and loss without wrapping modules: parameter names (and so
        # checkpoints) stay the same as without compile.
        module.compile(**({} if mode == "default" else {"mode": mode}))
    callbacks = instantiate_group(cfg.get("callbacks"))
    # Our model summary (no FLOPs column of zeros) in place of Lightning's default one.
    callbacks += summary_callbacks(cfg.trainer.get("enable_model_summary"), callbacks)
    loggers = instantiate_group(cfg.get("logger"))
    for logger in loggers:  # the whole resolved config: W&B's run config, TensorBoard's hparams (rank 0)
        logger.log_hyperparams(module.run_config)
    # max_time is enforced by RunControl (a budget per invocation, with a checkpoint at the end).
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                          precision=prepared.precision, max_time=None, enable_model_summary=False)
    return module, trainer


def enable_tf32() -> None:
    """TF32 matrix products on Ampere and later: fp32 work at tensor-core speed."""
    import torch

    if torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8:
        torch.set_float32_matmul_precision("high")


def prepare_early(datamodule: LMDataModule) -> None:
    """Download and tokenize text data before the run directory exists.

    A dataset or tokenizer that cannot be fetched is then a user error (exit 2, nothing
    written), not a crash inside fit. Only local rank 0 prepares, as Lightning's prepare_data
    does; the other ranks find the cache. Lightning's own prepare_data call is then a cache hit.
    """
    if datamodule.prepare_before_run and int(os.environ.get("LOCAL_RANK", "0")) == 0:
        with user_errors(OSError, ValueError):
            datamodule.prepare_data()


def init_weights(cfg: DictConfig, model_cfg: Any, kind: str | None = None) -> dict[str, Any] | None:
    """``model.init_from=NAME_OR_DIR``: Hugging Face GPT-2 or Llama weights, fetched before the run
    directory exists. ``kind``: the folder's format when known (a run reads it once, in derive)."""
    name = cfg.model.get("init_from")
    if not name:
        return None
    from lm_lightning.convert import pretrained_state

    return pretrained_state(str(name), model_cfg, kind)


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a callbacks/logger group that has a _target_."""
    from hydra.utils import instantiate

    if not group:
        return []
    return [instantiate(c) for c in group.values() if isinstance(c, DictConfig) and "_target_" in c]


def scheduler_factory(cfg: DictConfig):
    """The scheduler partial; ``fit_to_time`` is RunControl's option, not the scheduler's."""
    from hydra.utils import instantiate

    if not cfg.get("scheduler"):
        return None
    sched = OmegaConf.masked_copy(cfg.scheduler, [k for k in cfg.scheduler if k != "fit_to_time"])
    return instantiate(sched)


def log_effective_batch(trainer: Any, datamodule: LMDataModule) -> dict[str, int]:
    """Print (rank 0) and log the samples per optimizer step; returned for summary.json."""
    from lm_lightning.run.distributed import effective_batch_size

    micro = int(datamodule.batch_size)
    accumulate, world = int(trainer.accumulate_grad_batches), int(trainer.world_size)
    effective = effective_batch_size(micro, accumulate, world)
    info = {"effective_batch_size": effective, "micro_batch_size": micro,
            "accumulate_grad_batches": accumulate, "world_size": world}
    if trainer.is_global_zero:
        line = (f"effective batch size: {effective} = {micro} micro-batch x {accumulate} accumulation"
                f" x {world} processes")
        print(line, flush=True)  # the console, where the user looks before a long run
        log.info(line)  # train.log
    for logger in trainer.loggers:  # loggers write on rank 0 only
        logger.log_hyperparams(info)
    return info


def announce_resume(trainer: Any, plan: ResumePlan) -> str | None:
    if plan.path is None:
        return None
    if trainer.is_global_zero:
        for msg in (f"Loading checkpoint: {plan.path}", f"Resumed from step {plan.global_step} ({plan.path})"):
            print(msg, flush=True)
            log.info(msg)
    return str(plan.path)


def print_final_table(summary: dict[str, Any], datamodule: LMDataModule) -> None:
    """The validation metrics beside the data's baselines, when the data has baselines."""
    from lm_lightning.run.summary import print_final_table as table

    if not any(k.startswith("val/") for k in summary["metrics"]):
        return
    baselines = datamodule.baselines()
    if baselines:
        table(summary["metrics"], baselines, datamodule.metric_titles)


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
