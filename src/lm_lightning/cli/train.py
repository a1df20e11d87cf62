"""``python train.py ARGS`` / ``python -m lm_lightning.train ARGS``: the training command.

:func:`main` reads top to bottom: a guide's ``--flag`` is answered with the override to type; the
conf dir must exist; :func:`precheck` composes the config and prepares the run (checked config,
data module, model shape, resume plan: :mod:`lm_lightning.run.plan`) before Hydra creates any
directory; :func:`refuse_multirun_ddp` refuses a sweep whose jobs would launch DDP in-process;
then ``hydra.main`` composes again (that compose is what names and creates the run directory) and
runs :func:`task`, which hands the precheck's preparation to :func:`lm_lightning.run.session.train`
so nothing is built or loaded twice.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from lm_lightning.config.location import CONF_DIR
from lm_lightning.errors import UserError, one_line, report_and_exit
from lm_lightning.known_warnings import silence_known_warnings
from lm_lightning.run import rundir
from lm_lightning.run.plan import Prepared
from lm_lightning.run.session import is_multirun, train
from lm_lightning.startup import start_up

log = logging.getLogger("lm_lightning")

silence_known_warnings()  # at import: also covers processes that ddp_spawn starts


def main() -> None:
    import hydra

    from lm_lightning.cli.guide_flags import check_argv

    try:  # a guide's flag (--epochs 10): one line naming the override, before Hydra's usage
        check_argv(sys.argv[1:])
    except UserError as exc:
        report_and_exit(exc)
    if not CONF_DIR.is_dir():
        how = ("fix LM_LIGHTNING_CONF" if os.environ.get("LM_LIGHTNING_CONF")
               else "set LM_LIGHTNING_CONF to a directory holding train.yaml")
        report_and_exit(UserError(f"config directory {CONF_DIR} not found; {how}"))
    with start_up():  # the imports, the config and the data module: no collections, then frozen
        prepared = precheck(sys.argv[1:])
        refuse_multirun_ddp(sys.argv[1:])

    def run(cfg: DictConfig) -> float | None:
        return task(cfg, prepared)

    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")(run)()


def precheck(argv: list[str]) -> Prepared | None:
    """Compose the config and prepare the run before Hydra creates any directory; a user error
    is one line and exit 2. Returns the preparation for the task to reuse.

    Skipped (None) for multirun (each job prepares in its own task) and for Hydra's own flags.
    """
    if any(a in ("-m", "--multirun") or a.startswith("-") for a in argv):
        return None
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from lm_lightning.run.plan import plan_resume, prepare

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
        prepared = prepare(cfg, argv)
        plan_resume(cfg, Path(cfg.paths.output_dir), prepared)  # nothing written, nothing printed
    except UserError as exc:
        report_and_exit(exc)
    return prepared


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

    from lm_lightning.config.resolve import resolve_precision
    from lm_lightning.run.distributed import MULTIRUN_DDP_MESSAGE, build_bare_trainer, launches_in_process, sweep_jobs

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


def task(cfg: DictConfig, prepared: Prepared | None = None) -> float | None:
    """Hydra task: a user error ends this job with one line and exit 2.

    In a multirun a failed job (invalid combination, out of memory, NaN) is recorded as failed
    and returns None, which Optuna records as a failed trial, so the sweep goes on.
    """
    run_dir_existed = rundir.has_content(cfg)
    multirun = is_multirun()
    try:
        summary = train(cfg, prepared)
    except UserError as exc:
        rundir.remove_if_empty(cfg, run_dir_existed)
        if not multirun:
            report_and_exit(exc)
        return failed_job(cfg, exc)
    except Exception as exc:
        if not multirun:
            raise
        return failed_job(cfg, exc)
    if summary.get("exit_code"):
        raise SystemExit(summary["exit_code"])  # 143 after SIGTERM, 130 after SIGINT
    value = summary["metrics"].get(cfg.get("optimized_metric") or "", None)
    if multirun and (value is None or not math.isfinite(float(value))):
        print(f"warning: job {job_num()} ended with {cfg.get('optimized_metric')}={value}; "
              "counted as a failed trial", file=sys.stderr, flush=True)
        return None
    return value


def job_num() -> Any:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().job.get("num") if HydraConfig.initialized() else None


def failed_job(cfg: DictConfig, exc: BaseException) -> None:
    """Record a failed sweep job (unless train() already did) and say so in one line."""
    from lm_lightning.run import index
    from lm_lightning.run.distributed import env_is_global_zero

    if env_is_global_zero():
        try:
            index.record_failure(cfg, rundir.output_dir(cfg), exc)
        except Exception as record_exc:  # the index must never take the sweep down
            log.warning("could not record the failed job in the runs index: %s", record_exc)
    where = ""
    run_dir = rundir.output_dir(cfg)
    if not isinstance(exc, UserError) and run_dir.is_dir():
        # Not the user's mistake: keep the traceback with the job for debugging.
        import traceback

        (run_dir / "traceback.txt").write_text("".join(traceback.format_exception(exc)))
        where = f" (traceback in {run_dir / 'traceback.txt'})"
    print(f"error: job {job_num()} failed: {one_line(exc)}{where}", file=sys.stderr, flush=True)
    return None
