"""``load_best``: the best checkpoint of a run or sweep directory, ready for CPU inference."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from lm_lightning.ckpt.read import is_sharded
from lm_lightning.errors import UserError

log = logging.getLogger("lm_lightning")
# Metrics where higher is better; everything else (losses, perplexity, MAE) is minimized.
_MAXIMIZED = ("acc", "accuracy", "f1", "bleu")


def _summary(run_dir: Path) -> dict[str, Any] | None:
    f = run_dir / "summary.json"
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError:
        return None


def _resolve_ckpt(run_dir: Path, recorded: str | None) -> Path | None:
    """A checkpoint path as recorded (absolute, or relative to the cwd of training), else by name in run_dir."""
    if not recorded:
        return None
    p = Path(recorded)
    for candidate in (p, run_dir / "checkpoints" / p.name, run_dir / p.name):
        if candidate.is_file() or is_sharded(candidate):  # a file, or a sharded (FSDP) directory
            return candidate
    return None


def _score(summary: dict[str, Any], metric: str | None) -> float | None:
    value = summary.get("best_score") if metric is None else summary.get("metrics", {}).get(metric)
    if value is None and metric is None:
        value = summary.get("metrics", {}).get("val/loss")
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def maximize(metric: str | None) -> bool:
    return bool(metric) and any(metric.rsplit("/", 1)[-1].endswith(m) for m in _MAXIMIZED)


def best_run(path: str | Path, metric: str | None = None) -> Path:
    """The run directory itself, or the sweep job with the best ``metric`` (default: its checkpoint monitor)."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"run or sweep directory not found: {root}")
    if (root / "summary.json").is_file() or (root / "checkpoints").is_dir():
        return root
    jobs = []
    for summary_file in sorted(root.glob("*/summary.json")):
        summary = _summary(summary_file.parent)
        if summary and summary.get("status") == "finished":
            score = _score(summary, metric)
            if score is not None:
                jobs.append((score, summary_file.parent))
    if not jobs:
        raise UserError(f"{root} holds no finished run with a finite {metric or 'best score'}")
    sign = -1.0 if maximize(metric) else 1.0
    return min(jobs, key=lambda j: sign * j[0])[1]


def best_checkpoint(run_dir: Path) -> Path:
    summary = _summary(run_dir) or {}
    ckpt = _resolve_ckpt(run_dir, summary.get("best_checkpoint"))
    if ckpt is None:
        found = sorted((run_dir / "checkpoints").glob("best*.ckpt"))
        ckpt = found[-1] if found else None
    if ckpt is None:
        # No validation improved a monitored metric yet (or checkpoints only every N steps).
        ckpt = _resolve_ckpt(run_dir, summary.get("last_checkpoint")) or (run_dir / "checkpoints" / "last.ckpt")
        if not ckpt.exists():
            raise UserError(f"no checkpoint in {run_dir}/checkpoints")
        log.warning("no best checkpoint in %s; loading %s", run_dir, ckpt.name)
    return ckpt


def load_best(path: str | Path, metric: str | None = None):
    """``(model, tokenizer, cfg)`` from the best checkpoint of a run or sweep directory.

    - ``path``: a run directory (holding ``summary.json``/``checkpoints/``) or a sweep directory
      (its job subdirectories are compared), or a ``.ckpt`` file.
    - ``metric``: for a sweep, the final metric that picks the job (``val/loss``,
      ``val/next_token_acc``; names ending in acc/accuracy are maximized); default: each job's
      checkpoint-monitor best score. Within one run the best checkpoint is the monitor's.

    The model is a :class:`~lm_lightning.model.GPT` in eval mode on the CPU in fp32 (weights
    loaded with ``weights_only=True``; ``torch.compile``/DDP prefixes stripped). Task heads come
    along as submodules (``model.regression_head`` for Collatz stopping times). ``cfg`` is the
    resolved run config (an OmegaConf DictConfig), ``tokenizer`` None if it cannot be rebuilt.
    """
    import torch
    from omegaconf import OmegaConf

    from lm_lightning.ckpt.load import checkpoint_tokenizer, load_checkpoint

    p = Path(path)
    if p.is_file() or is_sharded(p):  # a checkpoint: a file, or a sharded directory (consolidated here)
        ckpt, run_dir = p, p.parent.parent
    else:
        run_dir = best_run(p, metric)
        ckpt = best_checkpoint(run_dir)
    loaded = load_checkpoint(ckpt)
    model = loaded.model
    if "regression_head.weight" in loaded.heads:
        w = loaded.heads["regression_head.weight"]
        head = torch.nn.Linear(w.shape[1], w.shape[0], bias="regression_head.bias" in loaded.heads)
        head.load_state_dict({k.split(".", 1)[1]: v.float() for k, v in loaded.heads.items()})
        model.add_module("regression_head", head.eval())
    config = loaded.config
    if config is None and (run_dir / ".hydra" / "config.yaml").is_file():
        config = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"))
    cfg = OmegaConf.create(config or {})
    with_path = OmegaConf.create({"checkpoint": str(ckpt), "run_dir": str(run_dir)})
    cfg = OmegaConf.merge(cfg, {"loaded_from": with_path})
    loaded.config = config
    return model, checkpoint_tokenizer(loaded), cfg
