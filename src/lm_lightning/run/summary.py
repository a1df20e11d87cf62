"""What a run reports when it ends: ``summary.json`` and the final metrics table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lm_lightning.atomic import fsync_replace, tmp_path
from lm_lightning.lit.metrics import current_metrics


def has_best(trainer) -> bool:
    cb = getattr(trainer, "checkpoint_callback", None)
    return bool(cb and cb.best_model_path)


def _scalar(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def write_summary(trainer, run_dir: Path, status: str, elapsed: float,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    from lm_lightning.callbacks.throughput import Throughput

    ckpt = trainer.checkpoint_callback
    metrics = {k: _scalar(v) for k, v in current_metrics(trainer).items()
               if k.startswith(("val/", "test/", "eval/"))}
    for cb in trainer.callbacks:  # the final evaluation on both splits (callbacks.split_eval)
        metrics.update(getattr(cb, "final_metrics", None) or {})
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
        final = run_dir / "summary.json"
        tmp = tmp_path(final)
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        fsync_replace(tmp, final)
    return summary


def print_final_table(metrics: dict[str, float], baselines: dict[str, float],
                      titles: dict[str, str] | None = None) -> None:
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
        title = (titles or {}).get(key, title)
        base = f"{baselines[base_key]:.4f} ({base_name})" if base_key in baselines else ""
        ref = f"{baselines[ref_key]:.4f} ({ref_name})" if ref_key and ref_key in baselines else ""
        table.add_row(title, f"{metrics[key]:.4f}", base, ref)
    Console().print(table)
