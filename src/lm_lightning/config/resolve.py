"""Config resolution: from a composed config to the values a run is built from.

The steps, in the order :func:`lm_lightning.run.plan.prepare` calls them:

1. :func:`resolve`: interpolations resolved in place (a broken one is a user error naming the key);
2. :func:`check`: the config alone, validated (schema, cross-key rules, hardware); pure, builds and
   changes nothing, and returns the precision the run will use;
3. (the data module is built: :func:`lm_lightning.run.plan.build_datamodule`)
4. :func:`derive`: the model shape from the preset, ``model.init_from`` and the data (vocabulary,
   block size); pure, returns the :class:`Derived` shape and what the shown config should say;
5. :func:`check_with_data`: the rules that need the data module and the model shape (loss weights
   against the data's objectives, optimizer techniques against the depth).

Every failure is a :class:`~lm_lightning.errors.UserError` with one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lm_lightning.errors import UserError, one_line, user_errors

# Keys under `model:` that are run options rather than architecture.
MODEL_RUN_KEYS = ("compile", "init_from")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CHECKED_ERRORS = (ValueError, TypeError, KeyError, FileNotFoundError, ImportError)


def resolve_precision(requested: str, accelerator: str) -> str:
    """``trainer.precision``: as given, else (``auto``) bf16/fp16 mixed on a CUDA GPU, fp32 on CPU."""
    import torch

    if str(requested) != "auto":
        return str(requested)
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def compile_mode(value: Any) -> str | None:
    """``model.compile``: false, true (torch.compile's default mode) or one of its modes."""
    if value is None or value is False:
        return None
    if value is True:
        return "default"
    if isinstance(value, str) and value in COMPILE_MODES:
        return value
    raise ValueError(f"model.compile must be true, false or one of {', '.join(COMPILE_MODES)}; got {value!r}")


def resolve(cfg: DictConfig) -> None:
    """Resolve every interpolation in place (what is printed and saved is what the run uses)."""
    try:
        OmegaConf.resolve(cfg)
    except Exception as exc:  # interpolation errors name the key that is wrong
        raise UserError(f"config: {one_line(exc)}") from exc


def check(cfg: DictConfig) -> str:
    """Validate the (resolved) config alone; returns the run's precision. Changes nothing."""
    import torch

    from lm_lightning.config.schema import validate as validate_schema
    from lm_lightning.optim.schedules import check_scheduler
    from lm_lightning.run.distributed import shared_run_dir_problem

    with user_errors(*CHECKED_ERRORS):
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
        z = cfg.loss.get("z_loss") or 0.0
        if not isinstance(z, (int, float)) or isinstance(z, bool) or z < 0:
            raise UserError(f"loss.z_loss must be a number >= 0 (0 = off), got {z!r}")
        problem = shared_run_dir_problem(cfg)
        if problem:
            raise UserError(problem)
        check_scheduler(OmegaConf.to_container(cfg.scheduler) if cfg.get("scheduler") else None)
        compile_mode(cfg.model.get("compile"))
    return precision


def cli_overrides(overrides: list[str] | None = None) -> list[str]:
    """The command line's overrides: as given, else Hydra's task overrides, else none."""
    if overrides is not None:
        return list(overrides)
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


@dataclass
class Derived:
    """The model shape a run has, and the ``model.*`` keys the printed and saved config should show
    for it (``model.init_from`` replaces the preset's shape; empty otherwise)."""

    model_cfg: Any
    shown: dict[str, Any] = field(default_factory=dict)
    init_kind: str | None = None


def derive(cfg: DictConfig, datamodule: Any, overrides: list[str] | None = None) -> Derived:
    """The model shape: the ``model`` preset, a ``model.init_from`` folder's config.json (which
    decides the architecture), then block size and vocabulary from the data. Pure.

    ``overrides``: the command line's ``key=value`` list (default: Hydra's, when it runs), which
    ``model.init_from`` needs to tell the user's architecture keys from the preset's.
    """
    from lm_lightning.model import ModelConfig

    with user_errors(*CHECKED_ERRORS):
        arch = {k: v for k, v in OmegaConf.to_container(cfg.model).items() if k not in MODEL_RUN_KEYS}
        shown: dict[str, Any] = {}
        kind = None
        if cfg.model.get("init_from"):
            # A Llama folder sets the architecture (config.json only; the weights load later).
            from lm_lightning.convert import derive_arch, user_model_keys

            name = str(cfg.model.init_from)
            arch, converter = derive_arch(name, arch, datamodule, user_model_keys(cli_overrides(overrides)))
            kind = converter.name
            shown = {k: arch[k] for k in arch if k in cfg.model or k == "vocab_size"}
        data_block = int(datamodule.block_size)
        if arch.get("block_size") is None:
            arch["block_size"] = data_block
        elif data_block > arch["block_size"]:
            raise UserError(f"data.block_size ({data_block}) exceeds model.block_size ({arch['block_size']})")
        arch["vocab_size"] = int(datamodule.vocab_size) if arch.get("vocab_size") is None else arch["vocab_size"]
        return Derived(ModelConfig.from_dict(arch), shown, kind)


def check_with_data(cfg: DictConfig, datamodule: Any, model_cfg: Any) -> None:
    """The rules that need the built data module and the derived model shape. Changes nothing."""
    from lm_lightning.lit.objectives import check_weights
    from lm_lightning.optim.build import check_techniques

    with user_errors(*CHECKED_ERRORS):
        check_weights(OmegaConf.to_container(cfg.loss.weights), datamodule.objectives)
        if (cfg.loss.get("z_loss") or 0.0) and "next_token" not in datamodule.objectives:
            raise UserError("loss.z_loss needs a next-token objective (text or Collatz data)")
        check_techniques(OmegaConf.to_container(cfg.optimizer), model_cfg.n_layer, cfg.trainer.get("strategy"))
