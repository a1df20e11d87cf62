"""Deciding where a run starts: fresh, or from which checkpoint.

``resume=auto`` (the default) carries on from the newest valid checkpoint in the run
directory's ``checkpoints/`` when there is one. The run directory is ``<runs_root>/<run_name>``,
or for an unnamed run ``<runs_root>/<experiment>-<config id>``
(:func:`lm_lightning.run.identity.run_dir_name`), so rerunning the same command resumes;
``fresh=true`` gives an unnamed run a new timestamped directory instead. ``resume=never`` starts
fresh and refuses a run directory that already holds a run unless ``overwrite=true``;
``resume=must`` is an error when there is nothing to resume; ``ckpt_path=PATH`` names the
checkpoint. Everything here runs before the run directory is touched, so a bad choice is a
one-line user error.
"""

from __future__ import annotations

import logging
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lm_lightning.errors import UserError

log = logging.getLogger("lm_lightning")

MODES = ("auto", "never", "must")
# Files a resume can never start from: weights-only final models and unfinished writes.
NOT_RESUMABLE = ("final.ckpt",)
STEP = re.compile(r"step-?(\d+)$")


@dataclass
class ResumePlan:
    path: Path | None = None
    global_step: int = 0
    skipped: tuple[Path, ...] = ()
    why_skipped: tuple[str, ...] = ()  # one reason per skipped checkpoint


def _order(p: Path) -> tuple:
    """`last.ckpt` first (it always names the newest training state); then by step, a training-time
    save (``step-N``) before a validation-time one (``best-stepN``) of the same step; then by age."""
    m = STEP.search(p.stem)
    return (p.name == "last.ckpt", int(m.group(1)) if m else -1, p.name.startswith("step-"), p.stat().st_mtime_ns)


def candidates(ckpt_dir: Path) -> list[Path]:
    """Resumable checkpoints, newest first."""
    if not ckpt_dir.is_dir():
        return []
    from lm_lightning.ckpt.read import is_sharded

    # A sharded checkpoint is a directory; it is only named *.ckpt once every rank has written it.
    files = [p for p in ckpt_dir.glob("*.ckpt") if (p.is_file() or is_sharded(p)) and p.name not in NOT_RESUMABLE]
    return sorted(files, key=_order, reverse=True)


def with_new_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's model config with the switches added since it was written at their defaults
    (a key it lacks is one the model did not have then, which is the default's behaviour)."""
    from dataclasses import MISSING, fields

    from lm_lightning.model import ModelConfig

    defaults = {f.name: f.default for f in fields(ModelConfig) if f.default is not MISSING}
    return {**{k: v for k, v in defaults.items() if k not in saved}, **saved}


def validate(path: Path, model_arch: dict[str, Any] | None) -> dict[str, Any]:
    """Read with weights_only=True; check that it is a full training checkpoint for this model."""
    from lm_lightning.ckpt.read import is_sharded, read_checkpoint, read_meta, sharded_keys

    if is_sharded(path):  # metadata and the index of tensors only: no weights are read here
        ckpt = read_meta(Path(path))
        if any(k.startswith("optimizer_") for k in sharded_keys(path)):
            ckpt["optimizer_states"] = []
    else:
        ckpt = read_checkpoint(path)
    if "optimizer_states" not in ckpt or "loops" not in ckpt:
        raise UserError(f"checkpoint {path} holds weights only (no optimizer or loop state); it cannot be resumed")
    saved = (ckpt.get("hyper_parameters") or {}).get("model")
    if model_arch is not None and saved is not None:
        saved = with_new_defaults(saved)
        diff = sorted(k for k in set(saved) | set(model_arch)
                      if k not in ("dropout", "activation_checkpointing") and saved.get(k) != model_arch.get(k))
        if diff:
            shown = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs config {model_arch.get(k)!r}" for k in diff[:3])
            raise UserError(f"checkpoint {path} is from an incompatible model ({shown})")
    return ckpt


def newest_valid(ckpt_dir: Path, model_arch: dict[str, Any] | None, quiet: bool = False) -> ResumePlan:
    """The newest checkpoint that loads; corrupt or truncated ones are skipped with a warning.

    An incompatible model is not skipped: resuming someone else's run by accident is an error.
    """
    skipped: list[Path] = []
    why: list[str] = []
    for path in candidates(ckpt_dir):
        try:
            ckpt = validate(path, model_arch)
        except UserError as exc:
            if "incompatible model" in str(exc):
                raise
            if not quiet:
                warn_skipped(path, str(exc))
            skipped.append(path)
            why.append(str(exc))
            continue
        return ResumePlan(path=path, global_step=int(ckpt.get("global_step", 0)), skipped=tuple(skipped),
                          why_skipped=tuple(why))
    return ResumePlan(skipped=tuple(skipped), why_skipped=tuple(why))


def warn_skipped(path: Path, why: str) -> None:
    print(f"warning: skipping unusable checkpoint {path}: {why}", file=sys.stderr, flush=True)
    log.warning("skipping unusable checkpoint %s: %s", path, why)


def for_run(plan: ResumePlan, cfg: Any) -> ResumePlan:
    """A plan made quietly (before the run directory existed), made ready for the run: the
    skipped checkpoints are warned about, and the checkpoint is one this strategy can load."""
    for path, why in zip(plan.skipped, plan.why_skipped):
        warn_skipped(path, why)
    if plan.path is not None:
        plan.path = for_strategy(plan.path, cfg)
    return plan


def plan_resume(cfg: Any, run_dir: Path, model_arch: dict[str, Any] | None, quiet: bool = False) -> ResumePlan:
    """Resolve ``resume``/``overwrite``/``ckpt_path`` against the run directory (no side effects)."""
    mode = str(cfg.get("resume") or "auto")
    if mode not in MODES:
        raise UserError(f"resume must be one of {', '.join(MODES)}, got {mode!r}")
    explicit = cfg.get("ckpt_path")
    if explicit:
        if mode == "never":
            raise UserError("resume=never contradicts ckpt_path; drop one of them")
        path = Path(str(explicit)).expanduser()
        ckpt = validate(path, model_arch)
        return ResumePlan(path=for_strategy(path, cfg) if not quiet else path, global_step=int(ckpt.get("global_step", 0)))
    ckpt_dir = run_dir / "checkpoints"
    if mode == "auto" and cfg.get("fresh") and not cfg.get("run_name"):
        return ResumePlan()  # fresh=true: a new timestamped directory, nothing to resume
    if mode == "never":
        if run_dir.is_dir() and any(run_dir.iterdir()) and not cfg.get("overwrite"):
            raise UserError(f"run directory {run_dir} already holds a run and resume=never; "
                            "pass overwrite=true to replace it, or resume=auto to carry on")
        return ResumePlan()
    plan = newest_valid(ckpt_dir, model_arch, quiet)
    if plan.path is not None and not quiet:
        plan.path = for_strategy(plan.path, cfg)
    if plan.path is None and mode == "must":
        if plan.skipped:
            names = ", ".join(p.name for p in plan.skipped)
            raise UserError(f"resume=must but there is no valid checkpoint in {ckpt_dir} (unusable: {names})")
        raise UserError(f"resume=must but there is no checkpoint in {ckpt_dir}")
    return plan


def for_strategy(path: Path, cfg: Any) -> Path:
    """The checkpoint this run's strategy can load.

    FSDP2 loads a sharded directory on any number of processes (resharding), and a single
    .ckpt file too. Other strategies (one process, DDP) read files only: a sharded directory is
    consolidated into a temporary single-file checkpoint (weights, optimizer state renumbered,
    loops, RNG), deleted when this process exits.
    """
    from lm_lightning.ckpt.read import is_sharded, read_sharded
    from lm_lightning.run.distributed import is_fsdp

    trainer = cfg.get("trainer") if hasattr(cfg, "get") else None
    sharded_run = is_fsdp(trainer.get("strategy") if trainer is not None else None)
    if sharded_run == is_sharded(path):  # FSDP2 from a directory, or a file into a file reader
        return path
    import atexit
    import tempfile

    import torch

    tmp = Path(tempfile.mkdtemp(prefix="lm_lightning-resume-"))
    atexit.register(shutil.rmtree, tmp, True)
    out = tmp / path.name
    if is_sharded(path):
        torch.save(read_sharded(path, optimizer=True), out)
        from lm_lightning.run.distributed import env_is_global_zero

        ranks = len(list(path.glob("__*_0.distcp")))
        line = (f"{path} is sharded ({ranks} ranks wrote it) and this run is not: consolidated it into {out} "
                "(weights, optimizer state, loops, RNG) to resume from")
        if env_is_global_zero():
            print(line, flush=True)
        log.info(line)
        return out
    if path.is_file():
        # A one-process (or DDP) checkpoint into FSDP2: Lightning maps numbered optimizer state
        # to parameter names by model.parameters() order, which is not our optimizer's group
        # order; the names the checkpoint recorded (LMModule.on_save_checkpoint) say which is which.
        from lm_lightning.ckpt.read import read_checkpoint

        ckpt = read_checkpoint(path)
        names = ckpt.get("optimizer_param_names")
        if "optimizer_states" in ckpt and not names:
            raise UserError(f"checkpoint {path} does not record its optimizer's parameter names (written before "
                            "FSDP2 support), so FSDP cannot place its optimizer state; resume it without FSDP")
        for state, order in zip(ckpt["optimizer_states"], names):
            state["state"] = {order[i]: v for i, v in state["state"].items()}
            for group in state["param_groups"]:
                group["params"] = [order[i] for i in group["params"]]
        torch.save(ckpt, out)
        return out
    return path


def apply_overwrite(cfg: Any, run_dir: Path) -> None:
    """``resume=never overwrite=true``: the old run goes away before the new one writes."""
    if str(cfg.get("resume") or "auto") == "never" and cfg.get("overwrite") and run_dir.is_dir():
        for child in run_dir.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        log.info("overwrite=true: removed the previous run in %s", run_dir)
