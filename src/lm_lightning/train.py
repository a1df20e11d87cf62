"""The training task and its Hydra entry point.

A run turns the composed config into objects in a fixed order: seed, data module, model,
callbacks, loggers, trainer; then fit (and test), then ``summary.json``. Everything a user can
get wrong is checked by :func:`check` first, before Hydra creates the run directory.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from lm_lightning.config.location import CONF_DIR, find_conf_dir  # noqa: F401 - train.CONF_DIR stays importable
from lm_lightning.run.distributed import (
    MULTIRUN_DDP_MESSAGE,
    build_bare_trainer,
    effective_batch_size,
    env_is_global_zero,
    launches_in_process,
    shared_run_dir_problem,
    sweep_jobs,
)
from lm_lightning.errors import UserError, one_line, report_and_exit, user_errors
from lm_lightning.known_warnings import silence_known_warnings
from lm_lightning.run.summary import has_best, print_final_table, write_summary

log = logging.getLogger("lm_lightning")


silence_known_warnings()  # at import: also covers processes that ddp_spawn starts

# Keys under `model:` that are run options rather than architecture.
MODEL_RUN_KEYS = ("compile", "init_from")


@dataclass
class Checked:
    """What check() derived from the config: enough to build the run without re-validating."""

    datamodule: Any
    model_cfg: Any
    precision: str


def resolve_precision(requested: str, accelerator: str) -> str:
    import torch

    if str(requested) != "auto":
        return str(requested)
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def enable_tf32() -> None:
    """TF32 matrix products on Ampere and later: fp32 work at tensor-core speed."""
    import torch

    if torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8:
        torch.set_float32_matmul_precision("high")


def check(cfg: DictConfig, overrides: list[str] | None = None) -> Checked:
    """Validate the config and build the cheap objects; raises UserError with one line.

    ``overrides``: the command line's ``key=value`` list (default: Hydra's, when it runs), which
    ``model.init_from`` needs to tell the user's architecture keys from the preset's.
    """
    import torch
    from hydra.utils import instantiate

    from lm_lightning.config.schema import validate as validate_schema
    from lm_lightning.model import ModelConfig
    from lm_lightning.objectives import check_weights
    from lm_lightning.optim.build import check_techniques
    from lm_lightning.optim.schedules import check_scheduler

    with user_errors(ValueError, TypeError, KeyError, FileNotFoundError, ImportError):
        try:
            OmegaConf.resolve(cfg)
        except Exception as exc:  # interpolation errors name the key that is wrong
            raise UserError(f"config: {one_line(exc)}") from exc
        validate_schema(cfg)  # every key's type and range, one line for the first bad one
        accelerator = str(cfg.trainer.get("accelerator", "auto"))
        if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            raise UserError(
                f"trainer.accelerator={accelerator} but no CUDA GPU is available on this machine; use trainer=cpu"
            )
        precision = resolve_precision(cfg.trainer.get("precision", "auto"), accelerator)
        if cfg.trainer.get("max_steps", -1) == 0:
            raise UserError("trainer.max_steps must be positive (or -1 with max_epochs)")
        lr = cfg.optimizer.get("lr")
        if lr is not None and not float(lr) > 0:
            raise UserError(f"optimizer.lr must be positive, got {lr}")
        try:
            datamodule = instantiate(cfg.data)
        except Exception as exc:  # Hydra wraps constructor errors; keep the innermost message
            raise UserError(one_line(exc.__cause__ or exc)) from exc
        use_hf_tokenizer(cfg, datamodule)
        arch = {k: v for k, v in OmegaConf.to_container(cfg.model).items() if k not in MODEL_RUN_KEYS}
        if cfg.model.get("init_from"):
            # A Llama folder sets the architecture (config.json only; the weights load later).
            from lm_lightning.hf_llama import apply_init_from, user_model_keys

            arch = apply_init_from(str(cfg.model.init_from), arch, datamodule, user_model_keys(cli_overrides(overrides)))
            with open_dict(cfg):  # the printed and saved config show the shape the run really has
                cfg.model.update({k: arch[k] for k in arch if k in cfg.model or k == "vocab_size"})
        data_block = int(datamodule.block_size)
        if arch.get("block_size") is None:
            arch["block_size"] = data_block
        elif data_block > arch["block_size"]:
            raise UserError(f"data.block_size ({data_block}) exceeds model.block_size ({arch['block_size']})")
        arch["vocab_size"] = int(datamodule.vocab_size) if arch.get("vocab_size") is None else arch["vocab_size"]
        model_cfg = ModelConfig.from_dict(arch)
        check_weights(OmegaConf.to_container(cfg.loss.weights), datamodule.objectives)
        z = cfg.loss.get("z_loss") or 0.0
        if not isinstance(z, (int, float)) or isinstance(z, bool) or z < 0:
            raise UserError(f"loss.z_loss must be a number >= 0 (0 = off), got {z!r}")
        if z and "next_token" not in datamodule.objectives:
            raise UserError("loss.z_loss needs a next-token objective (text or Collatz data)")
        problem = shared_run_dir_problem(cfg)
        if problem:
            raise UserError(problem)
        check_techniques(OmegaConf.to_container(cfg.optimizer), model_cfg.n_layer, cfg.trainer.get("strategy"))
        check_scheduler(OmegaConf.to_container(cfg.scheduler) if cfg.get("scheduler") else None)
        compile_mode(cfg.model.get("compile"))
    return Checked(datamodule=datamodule, model_cfg=model_cfg, precision=precision)


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_mode(value: Any) -> str | None:
    """``model.compile``: false, true (torch.compile's default mode) or one of its modes."""
    if value is None or value is False:
        return None
    if value is True:
        return "default"
    if isinstance(value, str) and value in COMPILE_MODES:
        return value
    raise ValueError(f"model.compile must be true, false or one of {', '.join(COMPILE_MODES)}; got {value!r}")


def prepare_early(datamodule: Any) -> None:
    """Download and tokenize text data before the run directory exists.

    A dataset or tokenizer that cannot be fetched is then a user error (exit 2, nothing
    written), not a crash inside fit. Only local rank 0 prepares, as Lightning's prepare_data
    does; the other ranks find the cache. Lightning's own prepare_data call is then a cache hit.
    """
    if getattr(datamodule, "prepare_before_run", False) and int(os.environ.get("LOCAL_RANK", "0")) == 0:
        with user_errors(OSError, ValueError):
            datamodule.prepare_data()


def init_weights(cfg: DictConfig, model_cfg: Any) -> dict[str, Any] | None:
    """``model.init_from=NAME_OR_DIR``: Hugging Face GPT-2 or Llama weights, fetched before the run
    directory exists."""
    name = cfg.model.get("init_from")
    if not name:
        return None
    from lm_lightning import hf_gpt2, hf_llama

    loader = hf_llama if hf_llama.init_kind(str(name)) == "llama" else hf_gpt2
    return loader.pretrained_state(str(name), model_cfg)


def cli_overrides(overrides: list[str] | None = None) -> list[str]:
    """The command line's overrides: as given, else Hydra's task overrides, else none."""
    if overrides is not None:
        return list(overrides)
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def use_hf_tokenizer(cfg: DictConfig, datamodule: Any) -> None:
    """``tokenizer=hf``: the fast tokenizer of ``tokenizer.path``, else of the ``model.init_from`` folder."""
    tok = cfg.data.get("tokenizer") if isinstance(cfg.data.get("tokenizer"), DictConfig) else None
    if tok is None or tok.get("kind") != "hf" or not hasattr(datamodule, "use_tokenizer"):
        return
    from lm_lightning.data.tokenizers import load_hf_tokenizer

    datamodule.use_tokenizer(load_hf_tokenizer(tok.get("path") or cfg.model.get("init_from")))


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a callbacks/logger group that has a _target_."""
    from hydra.utils import instantiate

    if not group:
        return []
    return [instantiate(c) for c in group.values() if isinstance(c, DictConfig) and "_target_" in c]


def output_dir(cfg: DictConfig) -> Path:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.paths.output_dir)


def save_run_config(cfg: DictConfig, run_dir: Path) -> None:
    """What Hydra's output_subdir would write, written only once the config is valid."""
    from hydra.core.hydra_config import HydraConfig

    d = run_dir / ".hydra"
    d.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, d / "config.yaml")
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        OmegaConf.save(OmegaConf.create(list(hc.overrides.task)), d / "overrides.yaml")
        OmegaConf.save(OmegaConf.create({"hydra": OmegaConf.to_container(hc)}), d / "hydra.yaml")


def attach_file_log(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    for name in ("lm_lightning", "lightning.pytorch"):
        logging.getLogger(name).addHandler(handler)
    logging.getLogger("lm_lightning").setLevel(logging.INFO)
    return handler


def print_config(cfg: DictConfig) -> None:
    from rich.console import Console
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    for key, value in cfg.items():
        branch = tree.add(str(key), style="bold")
        text = OmegaConf.to_yaml(value) if isinstance(value, DictConfig) else str(value)
        branch.add(Syntax(text.rstrip(), "yaml", theme="ansi_dark", background_color="default"))
    Console().print(tree)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train one run from a composed config; returns the summary (also written to summary.json).

    Holds the run directory's lock throughout (global rank 0; :mod:`lm_lightning.run.runlock`): a
    second start of a run that a live process is training is refused at once, exit 2."""
    from lm_lightning.run.runlock import run_lock

    with run_lock(output_dir(cfg)):
        return _train(cfg)


def _train(cfg: DictConfig) -> dict[str, Any]:
    silence_known_warnings()  # again: callers (notebooks, pytest's recwarn) may have reset the filters
    import lightning.pytorch as pl
    from hydra.utils import instantiate

    from lm_lightning import runs
    from lm_lightning.callbacks.model_summary import summary_callbacks
    from lm_lightning.module import LMModule

    run_dir = output_dir(cfg)
    with open_dict(cfg):
        # Pin the job directory before anything resolves ${paths.output_dir} (multirun jobs:
        # each job's checkpoints, logs and auto-resume stay in its own directory).
        cfg.paths.output_dir = str(run_dir)
    checked = check(cfg)
    if _is_multirun() and launches_in_process(build_bare_trainer(cfg.trainer, checked.precision)):
        # Backstop for sweepers main() cannot expand (e.g. Optuna); main() refuses the rest.
        raise UserError(MULTIRUN_DDP_MESSAGE)
    resume_plan = plan_resume_or_fresh(cfg, run_dir, checked)
    # Data preparation (tokenizing, downloads) and initial weights can fail on user input:
    # both happen before the run directory is written to.
    prepare_early(checked.datamodule)
    init_state = init_weights(cfg, checked.model_cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Every rank runs this function in the same run directory; one writer per file.
    rank_zero = env_is_global_zero()
    handler = None
    if rank_zero:
        save_run_config(cfg, run_dir)
        handler = attach_file_log(run_dir)
        print_config(cfg)

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    enable_tf32()
    datamodule = checked.datamodule
    model_cfg = checked.model_cfg
    max_steps = int(cfg.trainer.get("max_steps", -1))
    module = LMModule(
        model=model_cfg,
        loss_weights={k: v for k, v in cfg.loss.weights.items() if k in datamodule.objectives},
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
                          precision=checked.precision, max_time=None, enable_model_summary=False)
    batch = log_effective_batch(trainer, datamodule)
    if trainer.is_global_zero:
        log.info("run directory: %s", run_dir)
        log.info("model: %s parameters", f"{module.model.num_params():,}")

    run_id = runs.record_start(cfg, run_dir) if trainer.is_global_zero else None
    start = time.time()
    status, outcome = "failed", None
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=announce_resume(trainer, resume_plan),
                    weights_only=True)
        outcome = run_outcome(trainer)
        status = outcome[0]
        if cfg.get("test") and status == "finished":
            trainer.test(module, datamodule=datamodule, ckpt_path="best" if has_best(trainer) else None)
    finally:
        extra = {"stop_reason": outcome[1], "exit_code": outcome[2]} if outcome else {}
        summary = write_summary(trainer, run_dir, status, time.time() - start, {**batch, **extra})
        if run_id is not None:
            runs.record_end(cfg, run_id, run_dir, summary, error=sys.exc_info()[1])
        if handler is not None:
            logging.getLogger("lm_lightning").removeHandler(handler)
            logging.getLogger("lightning.pytorch").removeHandler(handler)
            handler.close()
    if (status == "finished" and hasattr(datamodule, "baselines") and trainer.is_global_zero
            and any(k.startswith("val/") for k in summary["metrics"])):
        print_final_table(summary["metrics"], datamodule.baselines(), getattr(datamodule, "metric_titles", None))
    return summary


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def log_effective_batch(trainer, datamodule) -> dict[str, int]:
    """Print (rank 0) and log the samples per optimizer step; returned for summary.json."""
    micro = int(getattr(datamodule, "batch_size", 0) or 0)
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


def plan_resume_or_fresh(cfg: DictConfig, run_dir: Path, checked: Checked):
    """Resolve resume/overwrite/ckpt_path before anything is written (user errors exit 2)."""
    from lm_lightning.run.resume import apply_overwrite, plan_resume

    plan = plan_resume(cfg, run_dir, checked.model_cfg.to_dict())
    apply_overwrite(cfg, run_dir)
    return plan


def precheck_resume(cfg: DictConfig, checked: Checked) -> None:
    """The resume decision, checked before Hydra creates the run directory (no side effects)."""
    from lm_lightning.run.resume import plan_resume

    plan_resume(cfg, Path(cfg.paths.output_dir), checked.model_cfg.to_dict(), quiet=True)


def announce_resume(trainer, plan) -> str | None:
    if plan.path is None:
        return None
    if trainer.is_global_zero:
        for msg in (f"Loading checkpoint: {plan.path}", f"Resumed from step {plan.global_step} ({plan.path})"):
            print(msg, flush=True)
            log.info(msg)
    return str(plan.path)


def scheduler_factory(cfg: DictConfig):
    """The scheduler partial; ``fit_to_time`` is RunControl's option, not the scheduler's."""
    from hydra.utils import instantiate

    if not cfg.get("scheduler"):
        return None
    sched = OmegaConf.masked_copy(cfg.scheduler, [k for k in cfg.scheduler if k != "fit_to_time"])
    return instantiate(sched)


def run_outcome(trainer):
    from lm_lightning.callbacks.control import run_outcome as outcome

    return outcome(trainer)


def task(cfg: DictConfig) -> float | None:
    """Hydra task: a user error ends this job with one line and exit 2.

    In a multirun a failed job (invalid combination, out of memory, NaN) is recorded as failed
    and returns None, which Optuna records as a failed trial, so the sweep goes on.
    """
    run_dir_existed = _run_dir_has_content(cfg)
    multirun = _is_multirun()
    try:
        summary = train(cfg)
    except UserError as exc:
        _remove_empty_run_dir(cfg, run_dir_existed)
        if not multirun:
            report_and_exit(exc)
        return _failed_job(cfg, exc)
    except Exception as exc:
        if not multirun:
            raise
        return _failed_job(cfg, exc)
    if summary.get("exit_code"):
        raise SystemExit(summary["exit_code"])  # 143 after SIGTERM, 130 after SIGINT
    value = summary["metrics"].get(cfg.get("optimized_metric") or "", None)
    if multirun and (value is None or not math.isfinite(float(value))):
        print(f"warning: job {_job_num()} ended with {cfg.get('optimized_metric')}={value}; "
              "counted as a failed trial", file=sys.stderr, flush=True)
        return None
    return value


def _job_num() -> Any:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().job.get("num") if HydraConfig.initialized() else None


def _failed_job(cfg: DictConfig, exc: BaseException) -> None:
    """Record a failed sweep job (unless train() already did) and say so in one line."""
    from lm_lightning import runs

    if env_is_global_zero():
        try:
            runs.record_failure(cfg, output_dir(cfg), exc)
        except Exception as record_exc:  # the index must never take the sweep down
            log.warning("could not record the failed job in the runs index: %s", record_exc)
    where = ""
    run_dir = output_dir(cfg)
    if not isinstance(exc, UserError) and run_dir.is_dir():
        # Not the user's mistake: keep the traceback with the job for debugging.
        import traceback

        (run_dir / "traceback.txt").write_text("".join(traceback.format_exception(exc)))
        where = f" (traceback in {run_dir / 'traceback.txt'})"
    print(f"error: job {_job_num()} failed: {one_line(exc)}{where}", file=sys.stderr, flush=True)
    return None


def _run_dir_has_content(cfg: DictConfig) -> bool:
    try:
        d = output_dir(cfg)
    except Exception:
        return True
    return d.exists() and any(d.iterdir())


def _remove_empty_run_dir(cfg: DictConfig, existed: bool) -> None:
    """Hydra creates the job directory before the task runs; take it back if it is still empty."""
    if existed:
        return
    try:
        d = output_dir(cfg)
        if d.exists() and not any(d.iterdir()):
            d.rmdir()
    except Exception:
        pass


def precheck(argv: list[str]) -> None:
    """Compose and validate the config before Hydra creates any directory.

    Skipped for multirun (each job is checked in its own task) and for Hydra's own flags.
    """
    if any(a in ("-m", "--multirun") or a.startswith("-") for a in argv):
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="train", overrides=argv, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        report_and_exit(UserError(one_line(exc).split(" Config search path")[0]))
    try:
        with open_dict(cfg):
            # The run directory as Hydra will name it (an unnamed run's name starts with the
            # experiment, which only the hydra node knows), then the job's config without it.
            try:
                cfg.paths.run_dir = str(cfg.paths.run_dir)
            except OmegaConfBaseException as exc:
                raise UserError(f"config: {one_line(exc)}") from exc
            del cfg["hydra"]
        checked = check(cfg, argv)
        precheck_resume(cfg, checked)
    except UserError as exc:
        report_and_exit(exc)


def refuse_multirun_ddp(argv: list[str]) -> None:
    """Exit 2 before Hydra starts a sweep whose jobs would launch DDP processes in-process.

    Lightning's launcher re-runs ``sys.argv`` for every extra rank; with ``-m`` in it, each
    rank would run the whole sweep again in new directories.
    """
    if not any(a in ("-m", "--multirun") for a in argv):
        return
    if any(a.startswith("hydra/launcher=") and a != "hydra/launcher=basic" for a in argv):
        # Jobs start in fresh processes (SLURM tasks, ...); train() checks each job there.
        return
    from hydra import compose, initialize_config_dir

    overrides = [a for a in argv if not a.startswith("-")]
    try:
        jobs = sweep_jobs(overrides)
    except Exception:  # a sweep syntax only the sweeper knows: train() checks each job instead
        return
    seen: set[str] = set()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for job in jobs:
            try:
                cfg = compose(config_name="train", overrides=job)
                key = OmegaConf.to_yaml(cfg.trainer)
                if key in seen:
                    continue
                seen.add(key)
                accelerator = str(cfg.trainer.get("accelerator", "auto"))
                trainer = build_bare_trainer(cfg.trainer, resolve_precision(cfg.trainer.get("precision", "auto"),
                                                                             accelerator))
            except Exception:  # this job's own error is reported when the job runs
                continue
            if launches_in_process(trainer):
                report_and_exit(UserError(MULTIRUN_DDP_MESSAGE))


def main() -> None:
    from lm_lightning.guide_flags import check_argv

    try:  # a guide's flag (--epochs 10): one line naming the override, before Hydra's usage
        check_argv(sys.argv[1:])
    except UserError as exc:
        report_and_exit(exc)
    if not CONF_DIR.is_dir():
        how = ("fix LM_LIGHTNING_CONF" if os.environ.get("LM_LIGHTNING_CONF")
               else "set LM_LIGHTNING_CONF to a directory holding train.yaml")
        report_and_exit(UserError(f"config directory {CONF_DIR} not found; {how}"))
    precheck(sys.argv[1:])
    refuse_multirun_ddp(sys.argv[1:])
    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")(task)()


if __name__ == "__main__":
    main()
