"""The training task and its Hydra entry point.

A run turns the composed config into objects in a fixed order: seed, data module, model,
callbacks, loggers, trainer; then fit (and test), then ``summary.json``. Everything a user can
get wrong is checked by :func:`check` first, before Hydra creates the run directory.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from lm_lightning.errors import UserError, one_line, report_and_exit, user_errors

log = logging.getLogger("lm_lightning")

CONF_DIR = Path(os.environ.get("LM_LIGHTNING_CONF", Path(__file__).resolve().parents[2] / "conf"))
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


def check(cfg: DictConfig) -> Checked:
    """Validate the config and build the cheap objects; raises UserError with one line."""
    import torch
    from hydra.utils import instantiate

    from lm_lightning.model import ModelConfig
    from lm_lightning.objectives import check_weights

    with user_errors(ValueError, TypeError, KeyError, FileNotFoundError, ImportError):
        try:
            OmegaConf.resolve(cfg)
        except Exception as exc:  # interpolation errors name the key that is wrong
            raise UserError(f"config: {one_line(exc)}") from exc
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
        arch = {k: v for k, v in OmegaConf.to_container(cfg.model).items() if k not in MODEL_RUN_KEYS}
        data_block = int(datamodule.block_size)
        if arch.get("block_size") is None:
            arch["block_size"] = data_block
        elif data_block > arch["block_size"]:
            raise UserError(f"data.block_size ({data_block}) exceeds model.block_size ({arch['block_size']})")
        arch["vocab_size"] = int(datamodule.vocab_size) if arch.get("vocab_size") is None else arch["vocab_size"]
        model_cfg = ModelConfig.from_dict(arch)
        check_weights(OmegaConf.to_container(cfg.loss.weights), datamodule.objectives)
    return Checked(datamodule=datamodule, model_cfg=model_cfg, precision=precision)


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
    """Train one run from a composed config; returns the summary (also written to summary.json)."""
    import lightning.pytorch as pl
    from hydra.utils import instantiate

    from lm_lightning.module import LMModule

    checked = check(cfg)
    run_dir = output_dir(cfg)
    resume_plan = plan_resume_or_fresh(cfg, run_dir, checked)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_run_config(cfg, run_dir)
    handler = attach_file_log(run_dir)
    print_config(cfg)

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = checked.datamodule
    model_cfg = checked.model_cfg
    max_steps = int(cfg.trainer.get("max_steps", -1))
    module = LMModule(
        model=model_cfg,
        loss_weights={k: v for k, v in cfg.loss.weights.items() if k in datamodule.objectives},
        optimizer=instantiate(cfg.optimizer),
        scheduler=scheduler_factory(cfg),
        total_steps=max(0, max_steps),
    )
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    if cfg.model.get("compile"):
        import torch

        module.model = torch.compile(module.model)
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    # max_time is enforced by RunControl (a budget per invocation, with a checkpoint at the end).
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                          precision=checked.precision, max_time=None)
    log.info("run directory: %s", run_dir)
    log.info("model: %s parameters", f"{module.model.num_params():,}")

    start = time.time()
    status, outcome = "failed", None
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=announce_resume(trainer, resume_plan),
                    weights_only=True)
        outcome = run_outcome(trainer)
        status = outcome[0]
        if cfg.get("test") and status == "finished":
            trainer.test(module, datamodule=datamodule, ckpt_path="best" if _has_best(trainer) else None)
    finally:
        extra = {"stop_reason": outcome[1], "exit_code": outcome[2]} if outcome else {}
        summary = write_summary(trainer, run_dir, status, time.time() - start, extra)
        logging.getLogger("lm_lightning").removeHandler(handler)
        logging.getLogger("lightning.pytorch").removeHandler(handler)
    if status == "finished" and hasattr(datamodule, "baselines") and trainer.is_global_zero:
        print_final_table(summary["metrics"], datamodule.baselines())
    return summary


def plan_resume_or_fresh(cfg: DictConfig, run_dir: Path, checked: Checked):
    """Resolve resume/overwrite/ckpt_path before anything is written (user errors exit 2)."""
    from lm_lightning.resume import apply_overwrite, plan_resume

    plan = plan_resume(cfg, run_dir, checked.model_cfg.to_dict())
    apply_overwrite(cfg, run_dir)
    return plan


def precheck_resume(cfg: DictConfig, checked: Checked) -> None:
    """The resume decision, checked before Hydra creates the run directory (no side effects)."""
    from lm_lightning.resume import plan_resume

    plan_resume(cfg, Path(cfg.paths.output_dir), checked.model_cfg.to_dict(), quiet=True)


def announce_resume(trainer, plan) -> str | None:
    if plan.path is None:
        return None
    if trainer.is_global_zero:
        msg = f"Resumed from step {plan.global_step} ({plan.path})"
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


def _has_best(trainer) -> bool:
    cb = getattr(trainer, "checkpoint_callback", None)
    return bool(cb and cb.best_model_path)


def _scalar(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def write_summary(trainer, run_dir: Path, status: str, elapsed: float,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    from lm_lightning.callbacks.progress import Throughput

    ckpt = trainer.checkpoint_callback
    metrics = {k: _scalar(v) for k, v in trainer.callback_metrics.items()
               if k.startswith(("val/", "test/"))}
    summary: dict[str, Any] = {
        "status": status,
        "global_step": trainer.global_step,
        "best_checkpoint": (ckpt.best_model_path or None) if ckpt else None,
        "best_score": _scalar(ckpt.best_model_score) if ckpt and ckpt.best_model_score is not None else None,
        "last_checkpoint": (ckpt.last_model_path or None) if ckpt else None,
        "final_model": (getattr(ckpt, "final_model_path", "") or None) if ckpt else None,
        "metrics": metrics,
        "elapsed_s": round(elapsed, 3),
        **(extra or {}),
    }
    for cb in trainer.callbacks:
        if isinstance(cb, Throughput):
            summary.update({k: round(v, 2) for k, v in cb.summary().items()})
    if trainer.is_global_zero:
        tmp = run_dir / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, run_dir / "summary.json")
    return summary


def print_final_table(metrics: dict[str, float], baselines: dict[str, float]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="final validation metrics")
    table.add_column("metric")
    table.add_column("model", justify="right")
    table.add_column("baseline", justify="right")
    table.add_column("reference", justify="right")
    rows = [
        ("next-bit cross-entropy (nats)", "val/next_token", "next_token_unigram", "unigram",
         "next_token_floor", "floor"),
        ("next-bit accuracy", "val/next_token_acc", "next_bit_acc_majority", "majority", None, None),
        ("stopping-time MAE (steps)", "val/stopping_time_mae", "stopping_time_mae_mean", "train mean",
         None, None),
    ]
    for title, key, base_key, base_name, ref_key, ref_name in rows:
        if key not in metrics:
            continue
        base = f"{baselines[base_key]:.4f} ({base_name})" if base_key in baselines else ""
        ref = f"{baselines[ref_key]:.4f} ({ref_name})" if ref_key and ref_key in baselines else ""
        table.add_row(title, f"{metrics[key]:.4f}", base, ref)
    Console().print(table)


def task(cfg: DictConfig) -> float | None:
    """Hydra task: a user error ends this job with one line and exit 2."""
    run_dir_existed = _run_dir_has_content(cfg)
    pin_output_dir(cfg)
    try:
        summary = train(cfg)
    except UserError as exc:
        _remove_empty_run_dir(cfg, run_dir_existed)
        report_and_exit(exc)
    if summary.get("exit_code"):
        raise SystemExit(summary["exit_code"])  # 143 after SIGTERM, 130 after SIGINT
    value = summary["metrics"].get(cfg.get("optimized_metric") or "", None)
    return value


def pin_output_dir(cfg: DictConfig) -> None:
    """Point ``paths.output_dir`` at Hydra's job directory before anything resolves it.

    check() resolves the whole config; without this, ``${paths.output_dir}`` in callbacks and
    loggers would resolve to ``paths.run_dir``, which every job of a multirun shares (their
    checkpoints would overwrite each other, and auto-resume would pick up a sibling's).
    """
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        with open_dict(cfg):
            cfg.paths.output_dir = HydraConfig.get().runtime.output_dir


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
            cfg = compose(config_name="train", overrides=argv)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        report_and_exit(UserError(one_line(exc).split(" Config search path")[0]))
    try:
        checked = check(cfg)
        precheck_resume(cfg, checked)
    except UserError as exc:
        report_and_exit(exc)


def main() -> None:
    if not CONF_DIR.is_dir():
        report_and_exit(UserError(f"config directory {CONF_DIR} not found; set LM_LIGHTNING_CONF"))
    precheck(sys.argv[1:])
    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")(task)()


if __name__ == "__main__":
    main()
