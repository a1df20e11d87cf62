"""Deciding where a run starts: fresh, or from which checkpoint.

``resume=auto`` (the default) carries on from the newest valid checkpoint in the run
directory's ``checkpoints/`` when the run has a ``run_name`` and there is one; ``resume=never`` starts fresh and refuses a run
directory that already holds a run unless ``overwrite=true``; ``resume=must`` is an error when
there is nothing to resume; ``ckpt_path=PATH`` names the checkpoint. Everything here runs
before the run directory is touched, so a bad choice is a one-line user error.
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


def _order(p: Path) -> tuple:
    """`last.ckpt` first (it always names the newest training state); then by step, a training-time
    save (``step-N``) before a validation-time one (``best-stepN``) of the same step; then by age."""
    m = STEP.search(p.stem)
    return (p.name == "last.ckpt", int(m.group(1)) if m else -1, p.name.startswith("step-"), p.stat().st_mtime_ns)


def candidates(ckpt_dir: Path) -> list[Path]:
    """Resumable checkpoints, newest first."""
    if not ckpt_dir.is_dir():
        return []
    files = [p for p in ckpt_dir.glob("*.ckpt") if p.is_file() and p.name not in NOT_RESUMABLE]
    return sorted(files, key=_order, reverse=True)


def validate(path: Path, model_arch: dict[str, Any] | None) -> dict[str, Any]:
    """Read with weights_only=True; check that it is a full training checkpoint for this model."""
    from lm_lightning.loading import read_checkpoint

    ckpt = read_checkpoint(path)
    if "optimizer_states" not in ckpt or "loops" not in ckpt:
        raise UserError(f"checkpoint {path} holds weights only (no optimizer or loop state); it cannot be resumed")
    saved = (ckpt.get("hyper_parameters") or {}).get("model")
    if model_arch is not None and saved is not None:
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
    for path in candidates(ckpt_dir):
        try:
            ckpt = validate(path, model_arch)
        except UserError as exc:
            if "incompatible model" in str(exc):
                raise
            if not quiet:
                print(f"warning: skipping unusable checkpoint {path}: {exc}", file=sys.stderr, flush=True)
                log.warning("skipping unusable checkpoint %s: %s", path, exc)
            skipped.append(path)
            continue
        return ResumePlan(path=path, global_step=int(ckpt.get("global_step", 0)), skipped=tuple(skipped))
    return ResumePlan(skipped=tuple(skipped))


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
        return ResumePlan(path=path, global_step=int(ckpt.get("global_step", 0)))
    ckpt_dir = run_dir / "checkpoints"
    if mode == "auto" and not cfg.get("run_name"):
        return ResumePlan()  # an unnamed run is a new run: only a stable name is resumed
    if mode == "never":
        if run_dir.is_dir() and any(run_dir.iterdir()) and not cfg.get("overwrite"):
            raise UserError(f"run directory {run_dir} already holds a run and resume=never; "
                            "pass overwrite=true to replace it, or resume=auto to carry on")
        return ResumePlan()
    plan = newest_valid(ckpt_dir, model_arch, quiet)
    if plan.path is None and mode == "must":
        if plan.skipped:
            names = ", ".join(p.name for p in plan.skipped)
            raise UserError(f"resume=must but there is no valid checkpoint in {ckpt_dir} (unusable: {names})")
        raise UserError(f"resume=must but there is no checkpoint in {ckpt_dir}")
    return plan


def apply_overwrite(cfg: Any, run_dir: Path) -> None:
    """``resume=never overwrite=true``: the old run goes away before the new one writes."""
    if str(cfg.get("resume") or "auto") == "never" and cfg.get("overwrite") and run_dir.is_dir():
        for child in run_dir.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        log.info("overwrite=true: removed the previous run in %s", run_dir)
