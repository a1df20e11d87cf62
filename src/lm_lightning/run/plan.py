"""Preparing a run, once: the checked config, the data module, the model shape and the resume plan.

:func:`prepare` runs the config-resolution steps (:mod:`lm_lightning.config.resolve`) and builds
the data module between them; :func:`plan_resume` picks the checkpoint to start from. The
command line does both before Hydra creates the run directory (so a user error writes nothing),
and the task reuses that :class:`Prepared` when its config is the one prepared
(:func:`fingerprint`); a multirun job, or a rank Lightning starts, prepares itself, once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf, open_dict

from lm_lightning.config import resolve as resolution
from lm_lightning.errors import UserError, one_line, user_errors

if TYPE_CHECKING:  # the data contract (imports Lightning)
    from lm_lightning.data.base import LMDataModule
    from lm_lightning.model import ModelConfig
    from lm_lightning.run.resume import ResumePlan

# Where the run writes: the task pins these to Hydra's job directory, so they are not the config.
RUN_DIR_KEYS = ("run_dir", "output_dir")


@dataclass
class Prepared:
    """What preparing derived from the config: enough to build the run without re-validating."""

    datamodule: LMDataModule
    model_cfg: ModelConfig
    precision: str
    shown: dict[str, Any] = field(default_factory=dict)  # model.* keys the shown config gets
    init_kind: str | None = None  # model.init_from's format ('gpt2', 'llama'), None without one
    key: str | None = None  # fingerprint() of the config it was prepared from
    run_dir: Path | None = None  # where resume was planned
    resume: ResumePlan | None = None  # planned for run_dir, quietly: warnings not yet shown

    def show_shape(self, cfg: DictConfig) -> None:
        """The printed and saved config show the shape the run really has (``model.init_from``)."""
        if self.shown:
            with open_dict(cfg):
                cfg.model.update(self.shown)


def fingerprint(cfg: DictConfig) -> str:
    """The composed config as written (interpolations unresolved), without Hydra's node and the
    run-directory keys: equal for the command line's compose and the task's for the same run."""
    data = OmegaConf.to_container(cfg, resolve=False)
    data.pop("hydra", None)
    for key in RUN_DIR_KEYS:
        (data.get("paths") or {}).pop(key, None)
    return OmegaConf.to_yaml(OmegaConf.create(data))


def use_hf_tokenizer(cfg: DictConfig, datamodule: LMDataModule) -> None:
    """``tokenizer=hf``: the fast tokenizer of ``tokenizer.path``, else of the ``model.init_from`` folder."""
    tok = cfg.data.get("tokenizer") if isinstance(cfg.data.get("tokenizer"), DictConfig) else None
    if tok is None or tok.get("kind") != "hf" or not datamodule.uses_tokenizer:
        return
    from lm_lightning.data.tokenizers import load_hf_tokenizer

    datamodule.use_tokenizer(load_hf_tokenizer(tok.get("path") or cfg.model.get("init_from")))


def build_datamodule(cfg: DictConfig) -> LMDataModule:
    """``data``'s data module (cheap: no download or tokenizing yet), with ``tokenizer=hf`` applied."""
    from hydra.utils import instantiate

    with user_errors(*resolution.CHECKED_ERRORS):
        try:
            datamodule = instantiate(cfg.data)
        except Exception as exc:  # Hydra wraps constructor errors; keep the innermost message
            raise UserError(one_line(exc.__cause__ or exc)) from exc
        use_hf_tokenizer(cfg, datamodule)
    return datamodule


def prepare(cfg: DictConfig, overrides: list[str] | None = None) -> Prepared:
    """Resolve and check the config, build the data module, derive the model shape; one line and
    a UserError for anything wrong. Resolves ``cfg`` in place and shows the derived shape in it.

    ``overrides``: the command line's ``key=value`` list (default: Hydra's, when it runs).
    """
    key = fingerprint(cfg)
    resolution.resolve(cfg)
    precision = resolution.check(cfg)
    datamodule = build_datamodule(cfg)
    derived = resolution.derive(cfg, datamodule, overrides)
    resolution.check_with_data(cfg, datamodule, derived.model_cfg)
    prepared = Prepared(datamodule, derived.model_cfg, precision, derived.shown, derived.init_kind, key)
    prepared.show_shape(cfg)
    return prepared


def plan_resume(cfg: DictConfig, run_dir: Path, prepared: Prepared) -> None:
    """Where the run starts (fresh, or which checkpoint, validated against the model), recorded in
    ``prepared``; nothing is printed or written (:func:`lm_lightning.run.resume.plan_resume`)."""
    from lm_lightning.run.resume import plan_resume as plan

    prepared.resume = plan(cfg, run_dir, prepared.model_cfg.to_dict(), quiet=True)
    prepared.run_dir = run_dir
